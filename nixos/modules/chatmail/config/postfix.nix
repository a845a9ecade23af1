# Postfix configuration of a chatmail relay as data, in the shape NixOS 26.05 takes it:
# `main` is services.postfix.settings.main (null leaves a key out), `master` holds
# services.postfix.settings.master entries, `maps` the regexp tables, written to
# paths.postfixMaps by whoever deploys this (NixOS: environment.etc; the lab: the overlay).
#
# Mail paths through Postfix:
#   submission/submissions -> filtermail outgoing (before-queue proxy) -> reinject
#     -> cleanup "authclean" (header scrubbing) -> queue -> local: Dovecot LMTP,
#     remote: the smtp client with verified TLS
#   port 25 -> filtermail incoming (before-queue proxy) -> reinject_incoming -> queue
#     -> Dovecot LMTP
{ settings, paths }:
let
  domain = settings.mail_domain;
  # An IP-literal relay (mail_domain an IPv4 address) receives for `[a.b.c.d]`.
  identity = import ./identity.nix domain;
  map' = name: "regexp:${paths.postfixMaps}/${name}";
  opts = attrs: builtins.concatLists (map (k: [ "-o" "${k}=${toString attrs.${k}}" ]) (builtins.attrNames attrs));
  loopback = port: "127.0.0.1:${toString port}";
  # OpenDKIM's milter, or null where nothing is signed (paths.dkimSocket = null).
  milter = if paths.dkimSocket or null == null then null else (import ./opendkim.nix { inherit settings paths; }).milter;
  withMilter = attrs: if milter == null then attrs else attrs // { smtpd_milters = milter; };

  # Authenticated clients: SASL through Dovecot, TLS 1.3 only, MAIL FROM must be the
  # login name, and every message passes the outgoing filter before it is queued.
  mua = {
    smtpd_tls_security_level = "encrypt";
    smtpd_tls_mandatory_protocols = ">=TLSv1.3";
    smtpd_sasl_auth_enable = "yes";
    smtpd_sasl_type = "dovecot";
    smtpd_sasl_path = "private/auth";
    smtpd_reject_unlisted_recipient = "no";
    smtpd_client_restrictions = "$mua_client_restrictions";
    smtpd_helo_restrictions = "$mua_helo_restrictions";
    smtpd_sender_restrictions = "$mua_sender_restrictions";
    smtpd_recipient_restrictions = "";
    smtpd_relay_restrictions = "permit_sasl_authenticated,reject";
    smtpd_client_connection_count_limit = settings.max_smtp_connections / 5;
    smtpd_proxy_filter = loopback settings.filtermail_smtp_port;
  };
in
{
  main = {
    myhostname = identity.hostname;
    myorigin = identity.literal;
    mydestination = [ identity.literal ];
    # Recipients are not checked here: Dovecot's LMTP refuses unknown users.
    local_recipient_maps = "";
    local_transport = "lmtp:unix:private/dovecot-lmtp";
    mailbox_size_limit = 0;
    message_size_limit = settings.max_message_size;
    # filtermail cuts the same delimiter off in its enforcement lookup (RECIPIENT_DELIMITER).
    recipient_delimiter = "+";
    maximal_queue_lifetime = "2d";
    # Retry deferred mail soon: a peer relay back after an outage gets its mail within
    # 10 + 40 s (the queue scan, then at most the longest backoff) without a manual flush.
    # A peer that stays down is not hammered: the queue manager remembers an unreachable
    # destination for minimal_backoff_time and probes it with one connection at a time.
    # queue_run_delay must not exceed minimal_backoff_time (postconf(5)).
    queue_run_delay = "10s";
    minimal_backoff_time = "10s";
    maximal_backoff_time = "40s";
    inet_interfaces = "all";
    inet_protocols = if settings.disable_ipv6 then "ipv4" else "all";
    mynetworks =
      [ "127.0.0.0/8" ]
      ++ (if settings.disable_ipv6 then [ ] else [ "[::ffff:127.0.0.0]/104" "[::1]/128" ]);
    # No reverse lookups of clients: faster, and the relay never uses client names.
    smtpd_peername_lookup = false;
    biff = false;
    append_dot_mydomain = false;

    # TLS as a server: offered everywhere, required per service in master.cf.
    smtpd_tls_chain_files = [ paths.tlsKey paths.tlsCert ];
    smtpd_tls_security_level = "may";
    smtpd_tls_exclude_ciphers = [ "aNULL" "RC4" "MD5" "DES" ];
    tls_preempt_cipherlist = true;

    # TLS as a client: the peer's certificate must verify for the MX host name, except
    # for the test and IP-literal relays of the policy map.
    smtp_tls_security_level = "verify";
    smtp_tls_servername = "hostname";
    smtp_tls_protocols = ">=TLSv1.2";
    smtp_tls_mandatory_protocols = ">=TLSv1.2";
    smtp_tls_policy_maps = map' "smtp_tls_policy";
    # One line per outgoing TLS session: whether the peer's certificate was verified.
    smtp_tls_loglevel = 1;

    # Relaying is refused unless a service in master.cf allows it.
    smtpd_relay_restrictions = "reject";
    mua_client_restrictions = [ "permit_sasl_authenticated" "reject" ];
    mua_sender_restrictions = [ "reject_sender_login_mismatch" "permit_sasl_authenticated" "reject" ];
    mua_helo_restrictions = [
      "permit_mynetworks"
      "reject_invalid_helo_hostname"
      "reject_non_fqdn_helo_hostname"
      "permit"
    ];
    smtpd_sender_login_maps = map' "login_map";

    # Postfix answers "451 4.3.0 Error: queue file write error" when it cannot reach its
    # before-queue filter (a fixed text); say what it means. filtermail words its own
    # temporary errors differently, so only that case matches.
    smtpd_reject_footer_maps = map' "smtpd_reject_footer";

    # Final delivery drops headers that only leak metadata into mailboxes.
    lmtp_header_checks = map' "lmtp_header_cleanup";
    # One LMTP delivery at a time per account (a recipient limit of 1 makes the concurrency
    # limit count per recipient, postconf(5)); different accounts still get theirs in
    # parallel. dedupe.sieve's duplicate records are read and written back by each
    # delivery, so two deliveries to one account at once could lose one's record, and a
    # resent copy would then be stored a second time (seen in the lab's kill tests during
    # a burst of 100 messages to one account).
    lmtp_destination_recipient_limit = 1;
    lmtp_destination_concurrency_limit = 1;
    # Header checks see top-level headers only, never MIME part headers or body text.
    disable_mime_input_processing = true;

    # Bounces Postfix writes itself are DKIM-signed too, so that other chatmail relays
    # (which refuse unsigned mail) accept them. Mail from users is signed on the
    # reinjection listener below.
    non_smtpd_milters = if milter == null then null else [ milter ];
    internal_mail_filter_classes = if milter == null then null else "bounce";
    milter_macro_daemon_name = if milter == null then null else "ORIGINATING";
    # If OpenDKIM is down, mail waits rather than leave unsigned (relays would refuse it).
    milter_default_action = if milter == null then null else "tempfail";
  };

  master = {
    smtp_inet = {
      name = "smtp";
      type = "inet";
      private = false;
      command = "smtpd";
      args = opts {
        smtpd_tls_security_level = "encrypt";
        smtpd_tls_mandatory_protocols = ">=TLSv1.2";
        smtpd_proxy_filter = loopback settings.filtermail_smtp_port_incoming;
        smtpd_relay_restrictions = "reject_unauth_destination";
      };
    };
    submission = {
      type = "inet";
      private = false;
      command = "smtpd";
      maxproc = settings.max_smtp_connections;
      args = opts (mua // { syslog_name = "postfix/submission"; smtpd_tls_auth_only = "yes"; });
    };
    submissions = {
      type = "inet";
      private = false;
      command = "smtpd";
      maxproc = settings.max_smtp_connections;
      args = opts (mua // { syslog_name = "postfix/submissions"; smtpd_tls_wrappermode = "yes"; });
    };
    # Mail that passed filtermail outgoing comes back here, then has its headers scrubbed.
    reinject = {
      name = loopback settings.postfix_reinject_port;
      type = "inet";
      private = false;
      command = "smtpd";
      maxproc = 100;
      args = opts (withMilter {
        syslog_name = "postfix/reinject";
        smtpd_tls_security_level = "none";
        milter_macro_daemon_name = "ORIGINATING";
        cleanup_service_name = "authclean";
        smtpd_relay_restrictions = "permit_mynetworks,reject";
      });
    };
    # Mail that passed filtermail incoming comes back here.
    reinject_incoming = {
      name = loopback settings.postfix_reinject_port_incoming;
      type = "inet";
      private = false;
      command = "smtpd";
      maxproc = 100;
      args = opts {
        syslog_name = "postfix/reinject_incoming";
        smtpd_tls_security_level = "none";
        smtpd_relay_restrictions = "reject_unauth_destination";
      };
    };
    authclean = {
      type = "unix";
      private = false;
      command = "cleanup";
      maxproc = 0;
      args = opts { header_checks = map' "submission_header_cleanup"; };
    };
  };

  maps = {
    # The SASL login must be exactly the MAIL FROM address.
    login_map = ''
      /^(.*)$/ ''${1}
    '';
    # Nothing about the sender's client or software leaves the relay. (filtermail replaces
    # the Subject: a REPLACE here would log the original subject; IGNORE logs nothing.)
    submission_header_cleanup = ''
      /^Received:/ IGNORE
      /^X-Originating-IP:/ IGNORE
      /^X-Mailer:/ IGNORE
      /^User-Agent:/ IGNORE
    '';
    lmtp_header_cleanup = ''
      /^DKIM-Signature:/ IGNORE
      /^Authentication-Results:/ IGNORE
      /^Received:/ IGNORE
    '';
    # Appended to the reply line ("\c": no line break) when the mail filter is unreachable.
    smtpd_reject_footer = ''
      /^4[0-9][0-9] 4\.3\.0 Error: queue file write error$/ \c (the relay's mail filter is not reachable; the message was not accepted, try again later)
    '';
    # IP-literal relays and relays whose domain starts with "_" have no certificate a
    # public CA would sign: require TLS, but do not verify it.
    smtp_tls_policy = ''
      /^\[.*\]$/ encrypt
      /^_/ encrypt
    '';
  };
}

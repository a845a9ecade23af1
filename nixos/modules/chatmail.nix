# services.chatmail: a chatmail relay, the minimal privacy-first mail server that Delta Chat
# users get an account on by simply logging in.
#
# This file declares the options; one file per concern under ./chatmail sets the nixpkgs
# options from the pure configuration data in ./chatmail/config (which the lab evaluates too).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkOption
    types
    ;

  cfg = config.services.chatmail;
  # An IPv4 address as domain makes an IP-literal relay (./chatmail/config/identity.nix).
  ipLiteral = cfg.domain != null && (import ./chatmail/config/identity.nix cfg.domain).ipv4;
  # chatmaild's defaults file, shared with the daemons: every settings default is given there
  # once, and set below with mkDefault.
  defaults = import ./chatmail/config/defaults.nix;
  journaldDefaults = (import ./chatmail/config/journald.nix).defaults;
  common = import ./chatmail/common.nix { inherit config lib pkgs; };

  # A chatmail.ini value: the renderer writes booleans as true/false, lists space-separated,
  # and leaves out null.
  iniValue = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      (types.listOf types.str)
    ]
  );

  # A declared chatmail.ini key: a type and a description; its default is set once, from the
  # defaults file, in `config` below.
  mkIniOption = type: description: mkOption { inherit type description; };

  # chatmail.ini keys the module writes itself, from other options or from its paths
  # (config/paths-nixos.nix): read-only, so that one fact has one place to set it.
  mkDerivedOption =
    default: defaultText: description:
    mkOption {
      type = types.nullOr types.str;
      readOnly = true;
      inherit default description;
      defaultText = literalExpression defaultText;
    };
  fromPaths = common.ini.fromPaths;

  # Upstream keys nothing here acts on, that an operator brought across anyway.
  upstreamOnlyGiven = builtins.filter (key: (cfg.settings.${key} or null) != null) (
    builtins.attrNames defaults.upstream-only
  );
in
{
  options.services.chatmail = {
    enable = mkEnableOption "a chatmail relay (Postfix, Dovecot and the chatmaild daemons)";

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "chat.example.org";
      description = ''
        The mail domain of the relay: addresses are `<name>@<domain>`, and the host must be
        reachable under this name (A/AAAA and MX records). Written to chatmail.ini as
        `mail_domain`. An IPv4 address instead makes a relay without a domain: addresses
        are `<name>@[<address>]`, the certificate is self-signed (clients are told to accept
        it) and nothing is DKIM-signed (other relays accept its mail from that address only).
      '';
    };

    package = mkOption {
      type = types.package;
      defaultText = literalExpression "chatmail-nix.packages.\${system}.chatmaild";
      description = ''
        The chatmaild package, providing the `doveauth` and `filtermail` daemons. The flake's
        `nixosModules.default` sets it to the flake's own build.
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        chatmail.ini `[params]`, with the upstream key names, so an operator can bring the
        file of an upstream deployment across. Keys not declared here are written as given;
        `null` leaves a key out. Defaults for every key come from the chatmaild defaults.
      '';
      example = {
        max_message_size = 52428800;
        delete_mails_after = 40;
      };
      type = types.submodule {
        freeformType = types.attrsOf iniValue;
        options = {
          mail_domain = mkDerivedOption cfg.domain "config.services.chatmail.domain" "Set through {option}`services.chatmail.domain`.";
          iroh_relay =
            mkDerivedOption common.irohRelayUrl
              ''if config.services.chatmail.iroh.enable then "https://''${config.services.chatmail.domain}" else if config.services.chatmail.iroh.relayUrl != null then config.services.chatmail.iroh.relayUrl else ""''
              "Set through {option}`services.chatmail.iroh.enable` or {option}`services.chatmail.iroh.relayUrl`; empty: no iroh relay is offered.";
          max_message_size = mkIniOption types.ints.positive "Largest message accepted, in bytes (Postfix `message_size_limit`).";
          delete_mails_after = mkIniOption types.ints.positive "Days after which mail is deleted from mailboxes.";
          username_min_length = mkIniOption types.ints.positive "Shortest local part a new account may have.";
          username_max_length = mkIniOption types.ints.positive "Longest local part a new account may have.";
          password_min_length = mkIniOption types.ints.positive "Shortest password a new account may have.";
          filtermail_smtp_port = mkIniOption types.port "Loopback port of the outgoing filter (before-queue proxy of submission).";
          filtermail_smtp_port_incoming = mkIniOption types.port "Loopback port of the incoming filter (before-queue proxy of port 25).";
          postfix_reinject_port = mkIniOption types.port "Loopback port where Postfix takes back mail the outgoing filter passed.";
          postfix_reinject_port_incoming = mkIniOption types.port "Loopback port where Postfix takes back mail the incoming filter passed.";
          max_smtp_connections = mkIniOption types.ints.positive "Most simultaneous submission connections per service.";
          max_imap_connections = mkIniOption types.ints.positive "Most simultaneous IMAP processes.";
          disable_ipv6 = mkIniOption types.bool "Listen and send on IPv4 only.";
          doveauth_listen = mkIniOption types.str "Loopback `host:port` where doveauth answers Dovecot's Lua passdb.";
          delete_large_after = mkIniOption types.ints.positive "Days after which large messages are deleted from mailboxes.";
          delete_inactive_users_after = mkIniOption types.ints.positive "Days without an IMAP login after which an account and its mail are removed.";
          notification_url = mkIniOption types.str "Push proxy that device tokens are sent to when new mail arrives (the relay never learns which phone a token belongs to).";
          newemail_listen = mkIniOption types.str "Loopback `host:port` of the `/new` account-suggestion service behind nginx.";
          filtermail_http_port_incoming = mkIniOption types.port "Loopback port where the incoming filter takes relay-to-relay deliveries over HTTP (nginx proxies `/mxdeliv` to it).";
          turn_port = mkIniOption types.port "UDP/TCP port of the TURN server for calls.";
        }
        // lib.mapAttrs (
          key: value:
          mkDerivedOption value "config/paths-nixos.nix" (
            "Written by the module from where it puts things (config/paths-nixos.nix)"
            + {
              tls_cert_mode = "; set through {option}`services.chatmail.tls.mode`.";
              turn_secret_file = "; the secret itself is {option}`services.chatmail.turn.secretFile`.";
              nocreate_file = "; {option}`services.chatmail.newAccounts` = false creates it.";
            }.${key} or "."
          )
        ) fromPaths;
      };
    };

    tls = {
      mode = mkOption {
        type = types.enum [
          "acme"
          "external"
          "self-signed"
        ];
        default =
          if cfg.tls.certificateFile != null then
            "external"
          else if ipLiteral then
            "self-signed"
          else
            "acme";
        defaultText = literalExpression ''"external" if certificateFile is set, "self-signed" if domain is an IPv4 address, else "acme"'';
        description = ''
          Where the relay's certificate comes from:
          - `acme`: Let's Encrypt (or {option}`security.acme.defaults.server`) through
            `security.acme`, answering the HTTP-01 challenge with nginx on port 80. Covers
            `<domain>`, `www.<domain>` and `mta-sts.<domain>`, whose DNS records must point here.
          - `external`: {option}`services.chatmail.tls.certificateFile` and `keyFile`, managed
            elsewhere.
          - `self-signed`: made on first start under /var/lib/chatmail-tls. Other relays accept
            it only if the domain starts with `_` or is an IP literal; for tests and IP-only
            relays.
        '';
      };
      acme = {
        acceptTerms = mkOption {
          type = types.bool;
          default = false;
          description = "Accept the ACME CA's terms of service (sets {option}`security.acme.acceptTerms`). Required with `tls.mode = \"acme\"`.";
        };
        email = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "postmaster@example.org";
          description = "Contact address for the ACME account (expiry warnings). Required with `tls.mode = \"acme\"` unless {option}`security.acme.defaults.email` is set.";
        };
      };
      certificateFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/chat.example.org/fullchain.pem";
        description = ''
          With `tls.mode = "external"`: PEM certificate chain for the relay's domain, used by
          Postfix, Dovecot and nginx. Must be trusted by other relays: they verify it before
          they deliver.
        '';
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/chat.example.org/key.pem";
        description = ''
          With `tls.mode = "external"`: PEM private key of
          {option}`services.chatmail.tls.certificateFile`. Give a path outside the Nix store
          (the store is world-readable), readable by root and by the nginx group.
        '';
      };
    };

    dkim = {
      enable = mkOption {
        type = types.bool;
        default = !ipLiteral;
        defaultText = literalExpression "true, false if domain is an IPv4 address";
        description = "Sign outgoing mail with DKIM through OpenDKIM (other relays reject unsigned mail; an IP-literal relay's mail is accepted by its address instead).";
      };
      selector = mkOption {
        type = types.strMatching "[A-Za-z0-9][A-Za-z0-9-]*";
        default = "opendkim";
        description = ''
          DKIM selector: the key is published as `<selector>._domainkey.<domain>` TXT. To rotate,
          create and publish a key under a new selector, then switch this option.
        '';
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/dkim.private";
        description = ''
          The DKIM private key (PEM), e.g. from sops-nix or agenix; it must be readable by the
          `opendkim` user. `null`: a 2048-bit key is generated on first start as
          /var/lib/opendkim/keys/<selector>.private, with the DNS record beside it in
          <selector>.txt.
        '';
      };
    };

    dovecot.instantIdle = mkOption {
      type = types.bool;
      default = true;
      description = "Build Dovecot without its 500 ms wait before IDLE clients hear of new mail: delivery is half a second faster, but Dovecot is compiled locally instead of coming from the binary cache. Applies to the module's default {option}`services.dovecot2.package` only.";
    };

    nginx.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Serve HTTPS with nginx: port 443 shared by ALPN with IMAP and SMTP, autoconfig, the
        MTA-STS policy, `/new` (account invites), `/mxdeliv` (relay-to-relay delivery) and
        port 80 (redirects and ACME challenges). Needed for `tls.mode = "acme"`. Your own
        virtual hosts keep working: HTTPS vhosts listen on
        {option}`services.nginx.defaultSSLListenPort` (8443) behind the port-443 split. nginx
        keeps no access log (the relay's privacy page says so); a vhost of yours that wants
        one sets its own `access_log`.
      '';
    };

    www.source = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./www";
      description = ''
        A directory of your own web pages, style sheet and images for the relay's site. Its
        files are copied over the relay's own pages: one of the same name replaces the
        relay's (`index.html`, `info.html`, `privacy.html`, `style.css`, which the pages
        share), any other is served beside them. So `style.css` alone restyles the relay's
        pages, and your own three pages replace them all. The invite's QR code stays at
        `/qr-invite.svg` for your pages to show, and the relay's own endpoints (`/new`,
        autoconfig, MTA-STS) cannot be replaced. The directory is copied into the Nix
        store: keep nothing secret in it. `null`: the relay's pages only.
      '';
    };

    unbound.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Run unbound as the host's DNSSEC-validating resolver, resolving from the root servers (no forwarding to third parties).";
    };

    turn = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run coturn for calls; clients get short-lived credentials from the relay's secret.";
      };
      secretFile = mkOption {
        type = types.str;
        default = "/var/lib/chatmail-turn/secret";
        description = "The TURN REST secret shared by coturn and chatmail-metadata; generated on first start if absent. Keep it outside the Nix store.";
      };
    };

    iroh = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Run an iroh relay on this host and tell Delta Chat clients to use it for realtime
          channels (webxdc apps), as `https://<domain>` (written to chatmail.ini as
          `iroh_relay`). It listens on loopback only; nginx passes it `/relay`, `/ping` and
          `/generate_204` of the relay's HTTPS site. Its version must speak the relay protocol
          of the clients in use: see {option}`services.chatmail.iroh.package`.
        '';
      };
      package = mkOption {
        type = types.package;
        default = pkgs.callPackage ../pkgs/iroh-relay/package.nix { };
        defaultText = literalExpression "pkgs.callPackage <chatmail-nix>/nixos/pkgs/iroh-relay/package.nix { }";
        description = ''
          The iroh-relay package. The default builds the version of nixos/pkgs/iroh-relay/
          version.json (0.35.0, the relay protocol of current Delta Chat cores) from its
          crate; nixpkgs' `iroh-relay` is of the incompatible 1.x line.
        '';
      };
      relayUrl = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://iroh.example.org/";
        description = ''
          An iroh relay elsewhere that Delta Chat clients are told to use for realtime
          channels (written to chatmail.ini as `iroh_relay`), instead of one on this host
          ({option}`services.chatmail.iroh.enable`). `null` with `enable = false`: none is
          offered, and clients use their built-in default.
        '';
      };
    };

    newAccounts = mkOption {
      type = types.bool;
      default = true;
      description = "Create an account on the first login of a new address. `false` is the kill switch: the file {option}`services.chatmail.settings.nocreate_file` exists and only existing accounts can log in.";
    };

    metrics = {
      enable = mkEnableOption ''
        Prometheus metrics of the relay, without a metrics daemon: every
        {option}`services.chatmail.metrics.interval`, `chatmail metrics` writes `chatmail.prom`
        (deliveries accepted, refusals by SMTP code, accounts created, pushes sent, failed and
        queued, expiry removals, and the accounts, messages and bytes stored) for the node
        exporter's textfile collector. No address or other private data is part of any metric'';
      interval = mkOption {
        type = types.str;
        default = "1min";
        example = "5min";
        description = "How often the textfile is rewritten (a systemd time span). Each run walks the file names of every mailbox: on a relay with very many accounts, a longer interval costs less.";
      };
      textfileDirectory = mkOption {
        type = types.strMatching "/.+";
        default = "/var/lib/chatmail-metrics";
        example = "/var/lib/prometheus-node-exporter-text-files";
        description = "Where `chatmail.prom` is written, for the node exporter's `--collector.textfile.directory`. The default is the directory where the daemons keep their counters; another directory is made for the mail user, and must be one the node exporter reads.";
      };
      configureNodeExporter = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Enable {option}`services.prometheus.exporters.node` with its textfile collector reading
          {option}`services.chatmail.metrics.textfileDirectory`, listening on 127.0.0.1:9100
          (both `mkDefault`: to scrape from another host, set its `listenAddress` and firewall
          yourself). `false`: you wire the textfile into your own exporter.
        '';
      };
    };

    journald = {
      volatile = mkOption {
        type = types.bool;
        default = journaldDefaults.volatile;
        description = "Keep the system journal in memory only, so logs (with addresses) never reach the disk.";
      };
      maxRetention = mkOption {
        type = types.nullOr types.str;
        default = journaldDefaults.maxRetention;
        description = "journald `MaxRetentionSec`: how long log entries are kept. `null` leaves journald's default.";
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Open the ports of the enabled parts in the firewall: SMTP (25, 465, 587), IMAP (143, 993), HTTP(S) (80, 443) with nginx, TURN (its port, and the relay range over UDP).";
    };
  };

  config = lib.mkMerge [
    # Every default, once, from the defaults file: starter values an operator overrides with a
    # plain assignment. All are written to chatmail.ini, so the file documents the relay.
    # (iroh_relay is read-only: services.chatmail.iroh sets it.)
    {
      services.chatmail.settings = lib.mapAttrs (_: lib.mkDefault) (
        builtins.removeAttrs defaults.settings [ "iroh_relay" ]
      );
    }
    (lib.mkIf cfg.enable {
      warnings = map (
        key: "services.chatmail.settings.${key}: known upstream key, not used by this relay (${defaults.upstream-only.${key}})."
      ) upstreamOnlyGiven;
    })
  ];

  imports = [
    ./chatmail/assertions.nix
    ./chatmail/users.nix
    ./chatmail/postfix.nix
    ./chatmail/dovecot.nix
    ./chatmail/daemons.nix
    ./chatmail/firewall.nix
    ./chatmail/tls.nix
    ./chatmail/opendkim.nix
    ./chatmail/nginx.nix
    ./chatmail/unbound.nix
    ./chatmail/turn.nix
    ./chatmail/privacy.nix
    ./chatmail/ordering.nix
    ./chatmail/metrics.nix
  ];
}

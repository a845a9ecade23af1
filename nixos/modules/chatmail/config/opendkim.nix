# OpenDKIM, signing only, as data (builtins only).
#
#   paths  dkimSelector, dkimKeyFile (the private key), dkimKeyTable and dkimSigningTable
#          (where whoever deploys this puts `keyTable` and `signingTable`), dkimSocket
#          (OpenDKIM's milter socket, "local:/path")
#
# `settings` is opendkim.conf as key -> string (services.opendkim.settings on NixOS);
# `milter` is the same socket in Postfix's spelling, for smtpd_milters/non_smtpd_milters.
#
# Only mail whose Postfix {daemon_name} macro is ORIGINATING is signed (the reinjection
# listener behind the outgoing filter sets it); no client address counts as internal, and
# nothing is ever verified (Mode s): incoming DKIM is filtermail's job.
{ settings, paths }:
let
  domain = settings.mail_domain;
  keyName = "${paths.dkimSelector}._domainkey.${domain}";
  socketPath = builtins.substring 6 (builtins.stringLength paths.dkimSocket - 6) paths.dkimSocket;
in
{
  keyTable = ''
    ${keyName} ${domain}:${paths.dkimSelector}:${paths.dkimKeyFile}
  '';
  # refile: the key is a pattern, so every address of the domain is signed.
  signingTable = ''
    *@${domain} ${keyName}
  '';

  milter = "unix:${socketPath}";

  settings = {
    Mode = "s";
    KeyTable = "file:${paths.dkimKeyTable}";
    SigningTable = "refile:${paths.dkimSigningTable}";
    MTA = "ORIGINATING";
    # No address makes a message "internal": signing follows the daemon name alone.
    InternalHosts = "-";
    Canonicalization = "relaxed/simple";
    # Sign Autocrypt and Content-Type on top of the default header list, and oversign the
    # headers a forwarder must not add a second copy of after signing.
    SignHeaders = "*,+autocrypt,+content-type";
    OversignHeaders = "from,reply-to,subject,date,to,cc,resent-date,resent-from,resent-sender,resent-to,resent-cc,in-reply-to,references,list-id,list-help,list-unsubscribe,list-subscribe,list-post,list-owner,list-archive,autocrypt";
    # The socket is group-writable so that Postfix (in OpenDKIM's group) can connect.
    UMask = "0007";
    Syslog = "yes";
    SyslogSuccess = "yes";
  };
}

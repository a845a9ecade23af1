# What the lab deploys on one relay, evaluated with
#   nix-instantiate --eval --strict --json tests/lab/relay.nix --argstr domain relay1.test
# It calls the same pure configuration files as the NixOS module, with the paths of the
# lab's Debian 13 root filesystem instead of NixOS's.
{ domain, settingsJSON ? "{}" }:
let
  cfg = ../../nixos/modules/chatmail/config;
  settings =
    (import (cfg + "/defaults.nix"))
    // {
      mail_domain = domain;
      # As the NixOS module writes them (daemons.nix), for `chatmail dns`.
      dkim_selector = paths.dkimSelector;
      dkim_key_file = paths.dkimKeyFile;
    }
    // builtins.fromJSON settingsJSON;
  paths = {
    postfixMaps = "/etc/chatmail/postfix";
    postfixQueue = "/var/spool/postfix";
    # TLS comes from ACME (pebble in the lab), at the paths NixOS's security.acme uses.
    tlsCert = "/var/lib/acme/${domain}/fullchain.pem";
    tlsKey = "/var/lib/acme/${domain}/key.pem";
    acmeWebroot = "/var/lib/acme/acme-challenge";
    authLua = "/etc/chatmail/auth.lua";
    pushLua = "/etc/chatmail/push.lua";
    metadataSocket = "/run/chatmail-metadata/metadata.socket";
    lastloginSocket = "/run/chatmail-lastlogin/lastlogin.socket";
    dkimSelector = "opendkim";
    dkimKeyFile = "/etc/chatmail/dkim/opendkim.private";
    dkimKeyTable = "/etc/chatmail/opendkim/KeyTable";
    dkimSigningTable = "/etc/chatmail/opendkim/SigningTable";
    dkimSocket = "local:/run/opendkim/opendkim.sock";
    tlsMode = "acme";
    httpsPort = 8443;
    wwwFiles = "/etc/chatmail/www";
    quotaExpire = "/usr/local/bin/chatmail-quota-expire";
    turnSecretFile = "/var/lib/chatmail-turn/secret";
    doveauthTokenFile = "/run/doveauth/token";
    mailboxesDir = "/home/vmail/mail/${domain}";
    vmailUser = "vmail";
    dovecotBaseDir = "/run/dovecot";
    dovecotInternalUser = "dovecot";
    dovecotInternalGroup = "dovecot";
    dovecotLogPath = "/var/log/dovecot.log";
  };
in
{
  inherit settings paths;
  chatmailIni = import (cfg + "/chatmail-ini.nix") { inherit settings; };
  postfix = import (cfg + "/postfix.nix") { inherit settings paths; };
  dovecotConf = import (cfg + "/dovecot.nix") { inherit settings paths; };
  authLua = builtins.readFile (cfg + "/auth.lua");
  pushLua = builtins.readFile (cfg + "/push.lua");
  opendkim = import (cfg + "/opendkim.nix") { inherit settings paths; };
  nginx = import (cfg + "/nginx.nix") { inherit settings paths; };
  turn = import (cfg + "/turn.nix") { inherit settings paths; };
  unbound = import (cfg + "/unbound.nix") { inherit settings; };
  acme = import (cfg + "/acme.nix") { inherit settings paths; };
}

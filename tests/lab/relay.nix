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
      # As on NixOS (turn.nix): chatmail-metadata reads the TURN secret as a credential.
      turn_secret_file = "/run/credentials/chatmail-metadata.service/turn-secret";
    }
    // builtins.fromJSON settingsJSON;
  paths = {
    chatmailIni = "/etc/chatmail/chatmail.ini";
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
    # null: log to stderr, which is the journal (as on NixOS).
    dovecotLogPath = null;
    turnGroup = "turnserver";
    # The lab makes each relay's DKIM key itself (its DNS publishes the record): a given key.
    dkimKeyGenerated = false;
    dkimUser = "opendkim";
    # The lab's acme-<domain> unit runs lego as NixOS's does.
    tlsUnit = "acme-${domain}.service";
    resolverUnit = "unbound.service";
    # Where the lab puts units, one-shot scripts and the chatmaild commands; this checkout's
    # python/chatmaild is mounted read-only at chatmaildSource.
    unitDir = "/etc/systemd/system";
    scriptDir = "/usr/local/lib/chatmail";
    binDir = "/usr/local/bin";
    chatmaildSource = "/opt/chatmaild";
    # Debian's units read these.
    postfixUnit = "postfix.service";
    postfixConfDir = "/etc/postfix";
    dovecotConf = "/etc/dovecot/dovecot.conf";
    opendkimConf = "/etc/opendkim.conf";
    opendkimPidFile = "/run/opendkim/opendkim.pid";
    nginxConf = "/etc/nginx/nginx.conf";
    unboundConf = "/etc/unbound/unbound.conf";
    # coturn takes no secret file: its unit writes turnConf from this template and the
    # secret when it starts (as NixOS's coturn module does).
    turnConfTemplate = "/etc/chatmail/turnserver.conf";
    turnConf = "/run/coturn/turnserver.conf";
    caTrustDir = "/usr/local/share/ca-certificates";
    # What update-ca-certificates makes of it (NixOS: security.pki.caBundle).
    caBundle = "/etc/ssl/certs/ca-certificates.crt";
    journaldDropIn = "/etc/systemd/journald.conf.d/chatmail.conf";
    tmpfiles = "/etc/tmpfiles.d/chatmail.conf";
    legoDir = "/var/lib/acme/.lego";
  };
  exe = name: "${paths.binDir}/${name}";
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
  units = import (cfg + "/units.nix") { inherit settings paths exe; };
  # The module's defaults (services.chatmail.journald).
  journald = import (cfg + "/journald.nix") {
    volatile = true;
    maxRetention = "3d";
  };
}

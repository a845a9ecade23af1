# Where everything lives on a lab relay (Debian 13's packages), with the same keys as NixOS's
# nixos/modules/chatmail/config/paths-nixos.nix. ./relay.nix hands it to the pure configuration
# files, and chatmail.ini's path keys are written from it.
{
  domain,
  # "self-signed" for the lab's IP-literal relay (its unit mirrors NixOS's chatmail-tls-selfsigned).
  tlsMode ? "acme",
  # false: no OpenDKIM (the IP-literal relay signs nothing, as on NixOS).
  dkim ? true,
}:
let
  selfSigned = tlsMode == "self-signed";
in
{
  chatmailIni = "/etc/chatmail/chatmail.ini";
  postfixMaps = "/etc/chatmail/postfix";
  postfixQueue = "/var/spool/postfix";
  # TLS comes from ACME (pebble in the lab), at the paths NixOS's security.acme uses, or is
  # self-signed at the paths of NixOS's self-signed mode.
  inherit tlsMode;
  tlsCert = if selfSigned then "/var/lib/chatmail-tls/cert.pem" else "/var/lib/acme/${domain}/fullchain.pem";
  tlsKey = if selfSigned then "/var/lib/chatmail-tls/key.pem" else "/var/lib/acme/${domain}/key.pem";
  # The lab's acme-<domain> unit runs lego as NixOS's does.
  tlsUnit = if selfSigned then "chatmail-tls-selfsigned.service" else "acme-${domain}.service";
  acmeWebroot = "/var/lib/acme/acme-challenge";
  authLua = "/etc/chatmail/auth.lua";
  pushLua = "/etc/chatmail/push.lua";
  dedupeSieve = "/etc/chatmail/dedupe.sieve";
  # Debian's dovecot-core and dovecot-sieve both install their plugins here.
  dovecotModuleDir = "/usr/lib/dovecot/modules";
  sieveBinDir = "/var/lib/chatmail-sieve";
  metadataSocket = "/run/chatmail-metadata/metadata.socket";
  lastloginSocket = "/run/chatmail-lastlogin/lastlogin.socket";
  dkimSelector = "opendkim";
  dkimKeyFile = "/etc/chatmail/dkim/opendkim.private";
  dkimKeyTable = "/etc/chatmail/opendkim/KeyTable";
  dkimSigningTable = "/etc/chatmail/opendkim/SigningTable";
  dkimSocket = if dkim then "local:/run/opendkim/opendkim.sock" else null;
  httpsPort = 8443;
  wwwFiles = "/etc/chatmail/www";
  quotaExpire = "/usr/local/bin/chatmail-quota-expire";
  turnSecretFile = "/var/lib/chatmail-turn/secret";
  # chatmail-metadata gets the secret as a credential (config/units.nix), as on NixOS.
  metadataTurnSecretFile = "/run/credentials/chatmail-metadata.service/turn-secret";
  doveauthTokenFile = "/run/doveauth/token";
  # Metrics are on in the lab: the daemons count into metricsDir, and chatmail-metrics writes
  # the node exporter's textfile there (NixOS's default textfile directory).
  metricsDir = "/var/lib/chatmail-metrics";
  metricsTextfileDir = "/var/lib/chatmail-metrics";
  metricsInterval = "1min";
  mailboxesDir = "/home/vmail/mail/${domain}";
  nocreateFile = "/etc/chatmail-nocreate";
  # Addresses that may never log in or be created again (`chatmail accounts block`).
  blocklistFile = "/var/lib/chatmail/blocklist";
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
  # The iroh relay each lab relay runs (built by ./iroh_build.py, copied in at `up`), and its
  # configuration file (config/iroh-relay.nix's `config`, as TOML).
  irohRelayExe = "/usr/local/bin/iroh-relay";
  irohRelayConfig = "/etc/chatmail/iroh-relay.toml";
}

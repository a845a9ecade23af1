# Where everything lives on a lab relay (Debian 13's packages), with the same keys as NixOS's
# nixos/modules/chatmail/config/paths-nixos.nix. ./relay.nix hands it to the pure configuration
# files, and chatmail.ini's path keys are written from it.
{ domain }:
{
  chatmailIni = "/etc/chatmail/chatmail.ini";
  postfixMaps = "/etc/chatmail/postfix";
  postfixQueue = "/var/spool/postfix";
  # TLS comes from ACME (pebble in the lab), at the paths NixOS's security.acme uses.
  tlsMode = "acme";
  tlsCert = "/var/lib/acme/${domain}/fullchain.pem";
  tlsKey = "/var/lib/acme/${domain}/key.pem";
  tlsUnit = null;
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
  httpsPort = 8443;
  wwwFiles = "/etc/chatmail/www";
  quotaExpire = "/usr/local/bin/chatmail-quota-expire";
  turnSecretFile = "/var/lib/chatmail-turn/secret";
  # chatmail-metadata is started by the lab itself and reads the secret in place; a relay that
  # runs the units of config/units.nix gets it as a credential, as on NixOS:
  # /run/credentials/chatmail-metadata.service/turn-secret.
  metadataTurnSecretFile = "/var/lib/chatmail-turn/secret";
  doveauthTokenFile = "/run/doveauth/token";
  mailboxesDir = "/home/vmail/mail/${domain}";
  nocreateFile = "/etc/chatmail-nocreate";
  # Addresses that may never log in or be created again (`chatmail accounts block`).
  blocklistFile = "/var/lib/chatmail/blocklist";
  vmailUser = "vmail";
  dovecotBaseDir = "/run/dovecot";
  dovecotInternalUser = "dovecot";
  dovecotInternalGroup = "dovecot";
  dovecotLogPath = "/var/log/dovecot.log";
}

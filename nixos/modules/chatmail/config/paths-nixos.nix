# Where everything lives on NixOS (builtins only): a pure function of the few inputs that vary
# between relays. ../common.nix calls it with the module's options; tests/nix/test_sandbox.py
# calls it with example values. The Debian lab has its own file, tests/lab/paths.nix, with the
# same keys. The chatmail.ini keys that name paths are written from here (./chatmail-ini.nix).
{
  domain,
  # services.chatmail.tls.mode, and the operator's files with "external".
  tlsMode ? "acme",
  certificateFile ? null,
  keyFile ? null,
  dkimEnable ? true,
  dkimSelector ? "opendkim",
  # null: services.opendkim generates <dkimKeyPath>/<selector>.private when it is missing.
  dkimKeyFile ? null,
  dkimKeyPath ? "/var/lib/opendkim/keys",
  # services.opendkim.user
  dkimUser ? "opendkim",
  # services.chatmail.unbound.enable: the local resolver the daemons start after.
  resolverEnable ? true,
  # The HTTPS site's port behind the port-443 multiplexer (services.nginx.defaultSSLListenPort).
  httpsPort ? 8443,
  turnEnable ? true,
  turnSecretFile ? "/var/lib/chatmail-turn/secret",
  # services.chatmail.metrics: whether `chatmail metrics` writes the node exporter's textfile,
  # where, and how often.
  metricsEnable ? false,
  metricsTextfileDir ? "/var/lib/chatmail-metrics",
  metricsInterval ? "1min",
  # script name -> absolute path of chatmaild's console script.
  exe ? (name: "/run/current-system/sw/bin/${name}"),
  # Store paths made by the module (the Lua scripts and the web pages).
  authLua ? "${./auth.lua}",
  pushLua ? "${./push.lua}",
  dedupeSieve ? "${./dedupe.sieve}",
  wwwFiles ? "/etc/chatmail/www",
  # services.chatmail.iroh.enable: the iroh-relay binary and its TOML file (null: no iroh
  # relay on this host).
  irohRelayExe ? null,
  irohRelayConfig ? null,
}:
let
  tls =
    {
      acme = {
        cert = "/var/lib/acme/${domain}/fullchain.pem";
        key = "/var/lib/acme/${domain}/key.pem";
        unit = "acme-${domain}.service";
      };
      external = {
        cert = certificateFile;
        key = keyFile;
        unit = null;
      };
      self-signed = {
        cert = "/var/lib/chatmail-tls/cert.pem";
        key = "/var/lib/chatmail-tls/key.pem";
        unit = "chatmail-tls-selfsigned.service";
      };
    }
    .${tlsMode};
in
{
  chatmailIni = "/etc/chatmail/chatmail.ini";
  postfixMaps = "/etc/chatmail/postfix";
  # services.postfix sets queue_directory to this; its private/ holds Dovecot's sockets.
  postfixQueue = "/var/lib/postfix/queue";
  inherit tlsMode authLua pushLua dedupeSieve wwwFiles httpsPort;
  # Dovecot's plugins, Pigeonhole's among them: what nixpkgs' dovecot2 module uses (the
  # packages in environment.systemPackages, ../dovecot.nix).
  dovecotModuleDir = "/run/current-system/sw/lib/dovecot/modules";
  # Where LMTP (as the mail user) keeps the compiled dedupe.sieve (tmpfiles, ./units.nix).
  sieveBinDir = "/var/lib/chatmail-sieve";
  tlsCert = tls.cert;
  tlsKey = tls.key;
  # The unit that makes the certificate (null: none, the operator provides it).
  tlsUnit = tls.unit;
  # security.acme's HTTP-01 webroot, served by nginx under /.well-known/acme-challenge/.
  acmeWebroot = "/var/lib/acme/acme-challenge";
  metadataSocket = "/run/chatmail-metadata/metadata.socket";
  lastloginSocket = "/run/chatmail-lastlogin/lastlogin.socket";
  quotaExpire = exe "chatmail-quota-expire";
  # The TURN secret on disk (coturn reads it; null when TURN is off) ...
  turnSecretFile = if turnEnable then turnSecretFile else null;
  # ... and where chatmail-metadata reads it: systemd hands it over as the credential
  # "turn-secret" (./units.nix, LoadCredential).
  metadataTurnSecretFile = if turnEnable then "/run/credentials/chatmail-metadata.service/turn-secret" else null;
  inherit dkimSelector;
  dkimKeyFile = if dkimKeyFile != null then dkimKeyFile else "${dkimKeyPath}/${dkimSelector}.private";
  # Generate dkimKeyFile on first start (chatmail-dkim-key, ./units.nix) unless one was given.
  dkimKeyGenerated = dkimKeyFile == null;
  inherit dkimUser;
  dkimKeyTable = "/etc/chatmail/opendkim/KeyTable";
  dkimSigningTable = "/etc/chatmail/opendkim/SigningTable";
  # null: nothing is signed, and Postfix gets no milter (./postfix.nix).
  dkimSocket = if dkimEnable then "local:/run/opendkim/opendkim.sock" else null;
  mailboxesDir = "/home/vmail/mail/${domain}";
  # While this file exists, doveauth creates no account (services.chatmail.newAccounts = false).
  nocreateFile = "/etc/chatmail-nocreate";
  # Addresses that may never log in or be created again (`chatmail accounts block`).
  blocklistFile = "/var/lib/chatmail/blocklist";
  vmailUser = "vmail";
  # nixpkgs' coturn module runs coturn as user and group turnserver.
  turnGroup = "turnserver";
  # The unit the daemons start after (null: none).
  resolverUnit = if resolverEnable then "unbound.service" else null;
  # services.dovecot2's unit has RuntimeDirectory = dovecot2 and creates these users.
  dovecotBaseDir = "/run/dovecot2";
  dovecotInternalUser = "dovecot2";
  dovecotInternalGroup = "dovecot2";
  # null: log to stderr, which is the journal.
  dovecotLogPath = null;
  doveauthTokenFile = "/run/doveauth/token";
  # Each daemon's event counters (chatmail.ini metrics_dir): a systemd StateDirectory, so it
  # must lie directly under /var/lib (./units.nix).
  metricsDir = "/var/lib/chatmail-metrics";
  # Where `chatmail metrics` writes chatmail.prom for the node exporter (null: metrics off).
  metricsTextfileDir = if metricsEnable then metricsTextfileDir else null;
  inherit metricsInterval;
  inherit irohRelayExe irohRelayConfig;
}

# Values derived from services.chatmail that several concern files need. Not a module:
# each concern file imports it with its own module arguments.
#
# The NixOS side of the contract with the pure files in ./config: `settings` (chatmail.ini
# keys, defaults merged) and `paths` (where things live on NixOS). The lab calls the same
# files with its Debian paths (tests/lab/relay.nix).
{
  config,
  lib,
  pkgs,
}:
let
  cfg = config.services.chatmail;
  inherit (cfg) settings;
in
rec {
  inherit cfg settings;

  paths = {
    chatmailIni = "/etc/chatmail/chatmail.ini";
    postfixMaps = "/etc/chatmail/postfix";
    # services.postfix sets queue_directory to this; its private/ holds Dovecot's sockets.
    postfixQueue = "/var/lib/postfix/queue";
    tlsMode = cfg.tls.mode;
    tlsCert = tls.cert;
    tlsKey = tls.key;
    authLua = "${./config/auth.lua}";
    pushLua = "${./config/push.lua}";
    metadataSocket = "/run/chatmail-metadata/metadata.socket";
    lastloginSocket = "/run/chatmail-lastlogin/lastlogin.socket";
    quotaExpire = lib.getExe' cfg.package "chatmail-quota-expire";
    turnSecretFile = if cfg.turn.enable then cfg.turn.secretFile else null;
    # nixpkgs' coturn module runs coturn as user and group turnserver.
    turnGroup = "turnserver";
    # OpenDKIM: services.opendkim generates <keyPath>/<selector>.private when it is missing.
    dkimSelector = cfg.dkim.selector;
    dkimKeyFile =
      if cfg.dkim.keyFile != null then
        cfg.dkim.keyFile
      else
        "${config.services.opendkim.keyPath}/${cfg.dkim.selector}.private";
    # Generate dkimKeyFile on first start (chatmail-dkim-key) unless the operator gave one.
    dkimKeyGenerated = cfg.dkim.keyFile == null;
    dkimUser = config.services.opendkim.user;
    dkimKeyTable = "/etc/chatmail/opendkim/KeyTable";
    dkimSigningTable = "/etc/chatmail/opendkim/SigningTable";
    # null: nothing is signed, and Postfix gets no milter (./config/postfix.nix).
    dkimSocket = if cfg.dkim.enable then "local:/run/opendkim/opendkim.sock" else null;
    # The HTTPS site, behind the port-443 multiplexer.
    httpsPort = config.services.nginx.defaultSSLListenPort;
    wwwFiles = "${wwwFiles}";
    mailboxesDir = if settings.mailboxes_dir or null != null then settings.mailboxes_dir else "/home/vmail/mail/${cfg.domain}";
    vmailUser = "vmail";
    # services.dovecot2's unit has RuntimeDirectory = dovecot2 and creates these users.
    dovecotBaseDir = "/run/dovecot2";
    dovecotInternalUser = "dovecot2";
    dovecotInternalGroup = "dovecot2";
    # null: log to stderr, which is the journal.
    dovecotLogPath = null;
    doveauthTokenFile = "/run/doveauth/token";
    # Units others start after (config/units.nix): the certificate's and the resolver's.
    tlsUnit = tls.unit;
    resolverUnit = if cfg.unbound.enable then "unbound.service" else null;
  };

  # Certificate and key for each TLS mode, and the unit that provides them (null: none).
  tls =
    {
      acme = {
        cert = "/var/lib/acme/${cfg.domain}/fullchain.pem";
        key = "/var/lib/acme/${cfg.domain}/key.pem";
        unit = "acme-${cfg.domain}.service";
      };
      external = {
        cert = cfg.tls.certificateFile;
        key = cfg.tls.keyFile;
        unit = null;
      };
      self-signed = {
        cert = "/var/lib/chatmail-tls/cert.pem";
        key = "/var/lib/chatmail-tls/key.pem";
        unit = "chatmail-tls-selfsigned.service";
      };
    }
    .${cfg.tls.mode};
  tlsUnits = lib.optional (tls.unit != null) tls.unit;

  units = import ./config/units.nix {
    inherit settings paths;
    exe = lib.getExe' cfg.package;
  };

  opendkim = import ./config/opendkim.nix { inherit settings paths; };

  nginx = import ./config/nginx.nix { inherit settings paths; };
  # The static files nginx serves (autoconfig, MTA-STS policy, robots.txt, web pages), and
  # the QR code of the invite the index page shows.
  qrInvite = pkgs.runCommand "qr-invite.svg" {
    nativeBuildInputs = [ pkgs.qrencode ];
  } "qrencode -t SVG -o $out ${lib.escapeShellArg nginx.qrText}";
  wwwFiles = pkgs.linkFarm "chatmail-www" (
    lib.mapAttrsToList (name: text: {
      inherit name;
      path = pkgs.writeText name text;
    }) nginx.files
    ++ [
      {
        name = "qr-invite.svg";
        path = qrInvite;
      }
    ]
  );

  unbound = import ./config/unbound.nix { inherit settings; };

  chatmailIni = pkgs.writeText "chatmail.ini" (import ./config/chatmail-ini.nix { inherit settings; });

  postfix = import ./config/postfix.nix { inherit settings paths; };

  dovecotConf = pkgs.writeText "dovecot.conf" (import ./config/dovecot.nix { inherit settings paths; });

  dovecotVersions = import ./config/dovecot-versions.nix;

  # One store file per regexp table, so that a change reloads Postfix.
  postfixMapFiles = lib.mapAttrs (name: text: pkgs.writeText "postfix-${name}" text) postfix.maps;
}

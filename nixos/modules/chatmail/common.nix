# Values derived from services.chatmail that several concern files need. Not a module:
# each concern file imports it with its own module arguments.
#
# The NixOS side of the contract with the pure files in ./config: `settings` (chatmail.ini
# keys, defaults merged) and `paths` (where things live on NixOS, ./config/paths-nixos.nix).
# The lab calls the same files with its Debian paths (tests/lab/paths.nix, tests/lab/relay.nix).
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

  # Where everything lives: ./config/paths-nixos.nix, from the options that vary.
  paths = import ./config/paths-nixos.nix {
    inherit (cfg) domain;
    tlsMode = cfg.tls.mode;
    inherit (cfg.tls) certificateFile keyFile;
    dkimEnable = cfg.dkim.enable;
    dkimSelector = cfg.dkim.selector;
    dkimKeyFile = cfg.dkim.keyFile;
    dkimKeyPath = config.services.opendkim.keyPath;
    dkimUser = config.services.opendkim.user;
    resolverEnable = cfg.unbound.enable;
    httpsPort = config.services.nginx.defaultSSLListenPort;
    turnEnable = cfg.turn.enable;
    turnSecretFile = cfg.turn.secretFile;
    metricsEnable = cfg.metrics.enable;
    metricsTextfileDir = cfg.metrics.textfileDirectory;
    metricsInterval = cfg.metrics.interval;
    exe = lib.getExe' cfg.package;
    authLua = "${./config/auth.lua}";
    pushLua = "${./config/push.lua}";
    dedupeSieve = "${./config/dedupe.sieve}";
    wwwFiles = "${wwwFiles}";
    irohRelayExe = if cfg.iroh.enable then lib.getExe' cfg.iroh.package "iroh-relay" else null;
    irohRelayConfig = if cfg.iroh.enable then "${irohRelayConfig}" else null;
  };

  # The relay's own iroh relay (services.chatmail.iroh.enable): its configuration as data,
  # written as the TOML file it reads, and the URL clients are told.
  irohRelay = import ./config/iroh-relay.nix { inherit settings; };
  irohRelayConfig = (pkgs.formats.toml { }).generate "iroh-relay.toml" irohRelay.config;
  irohRelayUrl =
    if cfg.iroh.enable then
      irohRelay.url
    else if cfg.iroh.relayUrl != null then
      cfg.iroh.relayUrl
    else
      "";

  # Certificate and key of the chosen TLS mode, and the unit that provides them (null: none).
  tls = {
    cert = paths.tlsCert;
    key = paths.tlsKey;
    unit = paths.tlsUnit;
  };
  tlsUnits = lib.optional (tls.unit != null) tls.unit;

  units = import ./config/units.nix {
    inherit settings paths;
    exe = lib.getExe' cfg.package;
  };

  opendkim = import ./config/opendkim.nix { inherit settings paths; };

  nginx = import ./config/nginx.nix {
    inherit settings paths;
    journal = { inherit (cfg.journald) volatile maxRetention; };
  };
  # The QR code of the invite the index page shows. One SVG path, not a square per module:
  # squares leave hairline seams between them when a browser scales the image, and scanners
  # then fail to read it.
  qrInvite = pkgs.runCommand "qr-invite.svg" {
    nativeBuildInputs = [ pkgs.qrencode ];
  } "qrencode -t SVG --svg-path -o $out ${lib.escapeShellArg nginx.qrText}";
  # The web site: the relay's pages, with the operator's files (services.chatmail.www.source)
  # copied over them, so that one of the same name replaces the relay's.
  wwwSite = pkgs.runCommand "chatmail-www-site" { } (
    "mkdir $out\n"
    + lib.concatStrings (
      lib.mapAttrsToList (
        name: text: "install -m 0644 ${pkgs.writeText name text} $out/${lib.escapeShellArg name}\n"
      ) nginx.pages
    )
    + lib.optionalString (cfg.www.source != null) ''
      cp -rT --no-preserve=mode ${lib.escapeShellArg "${cfg.www.source}"} $out
    ''
  );
  # What nginx serves: the relay's own files (autoconfig, MTA-STS policy, robots.txt), the
  # QR code, and the site in site/.
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
      {
        name = "site";
        path = wwwSite;
      }
    ]
  );

  unbound = import ./config/unbound.nix { inherit settings; };

  ini = import ./config/chatmail-ini.nix { inherit settings paths; };
  chatmailIni = pkgs.writeText "chatmail.ini" ini.text;

  postfix = import ./config/postfix.nix { inherit settings paths; };

  dovecotConf = pkgs.writeText "dovecot.conf" (import ./config/dovecot.nix { inherit settings paths; });

  dovecotVersions = import ./config/dovecot-versions.nix;

  # One store file per regexp table, so that a change reloads Postfix.
  postfixMapFiles = lib.mapAttrs (name: text: pkgs.writeText "postfix-${name}" text) postfix.maps;
}

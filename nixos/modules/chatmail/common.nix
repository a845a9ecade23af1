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
    tlsCert = cfg.tls.certificateFile;
    tlsKey = cfg.tls.keyFile;
    authLua = "${./config/auth.lua}";
    mailboxesDir = if settings.mailboxes_dir or null != null then settings.mailboxes_dir else "/home/vmail/mail/${cfg.domain}";
    vmailUser = "vmail";
    # services.dovecot2's unit has RuntimeDirectory = dovecot2 and creates these users.
    dovecotBaseDir = "/run/dovecot2";
    dovecotInternalUser = "dovecot2";
    dovecotInternalGroup = "dovecot2";
    # null: log to stderr, which is the journal.
    dovecotLogPath = null;
    doveauthTokenFile = "/run/doveauth/token";
  };

  chatmailIni = pkgs.writeText "chatmail.ini" (import ./config/chatmail-ini.nix { inherit settings; });

  postfix = import ./config/postfix.nix { inherit settings paths; };

  dovecotConf = pkgs.writeText "dovecot.conf" (import ./config/dovecot.nix { inherit settings paths; });

  dovecotVersions = import ./config/dovecot-versions.nix;

  # One store file per regexp table, so that a change reloads Postfix.
  postfixMapFiles = lib.mapAttrs (name: text: pkgs.writeText "postfix-${name}" text) postfix.maps;
}

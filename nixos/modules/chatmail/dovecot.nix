# Dovecot 2.4: the whole dovecot.conf comes from ./config/dovecot.nix, so NixOS and the lab
# run the same text. Accounts are looked up by a Lua passdb/userdb that asks doveauth; IMAP
# METADATA and last-login go to the chatmail-metadata and chatmail-lastlogin dict sockets.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg dovecotConf dovecotVersions units;
  # nixpkgs builds Dovecot without Lua; our passdb/userdb is a Lua script.
  dovecotWithLua = (pkgs.dovecot).override { withLua = true; };
  # Dovecot waits 500 ms after a new file appears in a maildir before it tells IDLE clients
  # (NOTIFY_DELAY_MSECS in lib-storage's mailbox watch); the patch makes that 0. Added to
  # the package's own patches, so nothing outside this module sees a different Dovecot.
  dovecotPackage =
    if cfg.dovecot.instantIdle then
      dovecotWithLua.overrideAttrs (old: {
        patches = (old.patches or [ ]) ++ [ ./patches/dovecot-no-idle-delay.patch ];
      })
    else
      dovecotWithLua;
in
{
  config = lib.mkIf cfg.enable {
    services.dovecot2 = {
      enable = true;
      package = lib.mkDefault dovecotPackage;
      # configFile takes over: nixpkgs then renders no dovecot.conf of its own, so
      # services.dovecot2.settings (protocols, mail_path, ssl_server_cert_file, ...) and the
      # other options nixpkgs writes into that file have no effect here. Everything Dovecot
      # reads is in ./config/dovecot.nix; change it there. The unit (dovecot.service,
      # restarted when this file changes) and its users stay nixpkgs'.
      configFile = dovecotConf;
      # The module asserts these for Dovecot 2.4 even when configFile is given; the values
      # are the ones our dovecot.conf starts with.
      settings = {
        inherit (dovecotVersions) dovecot_config_version dovecot_storage_version;
      };
    };

    # A restart lets deliveries in progress finish (no duplicates): see units.nix.
    systemd.services.dovecot.serviceConfig = units.dovecotService;

    # Ordering: ordering.nix.
  };
}

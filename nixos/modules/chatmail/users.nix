# The vmail user owns every mailbox and runs the chatmaild daemons; Dovecot's LMTP and
# auth-worker processes run as it too.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg paths;
in
{
  config = lib.mkIf cfg.enable {
    users.users.${paths.vmailUser} = {
      isSystemUser = true;
      group = paths.vmailUser;
      description = "chatmail mailboxes";
      home = "/home/vmail";
      createHome = true;
      homeMode = "700";
    };
    users.groups.${paths.vmailUser} = { };

    # The mailbox directories come from config/units.nix (daemons.nix).
    # paths.nocreateFile (chatmail.ini's nocreate_file) is the kill switch for new accounts:
    # doveauth creates none while it exists (services.chatmail.newAccounts = false);
    # switching back removes it.
    systemd.tmpfiles.rules = [
      (if cfg.newAccounts then "r ${paths.nocreateFile}" else "f ${paths.nocreateFile} 0644 root root - -")
    ];
  };
}

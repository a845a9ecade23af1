# Postfix: main.cf, master.cf and the regexp tables, all from ./config/postfix.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg postfix postfixMapFiles;
in
{
  config = lib.mkIf cfg.enable {
    services.postfix = {
      enable = true;
      # The relay needs exactly this configuration: assigned plainly, so that a change
      # takes an explicit lib.mkForce.
      settings.main = postfix.main;
      # Includes submission (587) and submissions (465): enableSubmission(s) stay off.
      settings.master = postfix.master;
    };

    # Referenced from main.cf/master.cf as regexp:/etc/chatmail/postfix/<name>.
    environment.etc = lib.mapAttrs' (
      name: file: lib.nameValuePair "chatmail/postfix/${name}" { source = file; }
    ) postfixMapFiles;

    # Ordering: ordering.nix.
    systemd.services.postfix = {
      reloadTriggers = lib.attrValues postfixMapFiles;
    };
  };
}

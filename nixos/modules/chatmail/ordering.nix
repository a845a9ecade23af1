# Start-up order between the relay's services, from ./config/units.nix (`ordering`, where
# the reasons are; the lab writes the same lists into drop-ins for Debian's units). The
# chatmaild units carry their own order (daemons.nix).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg units;
  order = names: {
    wants = names;
    after = names;
  };
in
{
  config = lib.mkIf cfg.enable {
    systemd.services = lib.mapAttrs (_: order) (
      lib.filterAttrs (name: names: names != [ ] && (name != "nginx" || cfg.nginx.enable)) units.ordering
    );
  };
}

# unbound as the host's resolver (services.unbound.resolveLocalQueries, the default, points
# /etc/resolv.conf at it), configured by ./config/unbound.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg unbound;
in
{
  config = lib.mkIf (cfg.enable && cfg.unbound.enable) {
    services.unbound = {
      enable = true;
      settings = unbound;
    };
    # Ordering: ordering.nix.
  };
}

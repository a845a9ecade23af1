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
  # Starter values (privacy and hardening an operator may turn off with a plain definition);
  # the listening addresses, IPv6 and the zero negative-cache time are what the relay needs.
  starter = [
    "hide-identity"
    "hide-version"
    "qname-minimisation"
  ];
in
{
  config = lib.mkIf (cfg.enable && cfg.unbound.enable) {
    services.unbound = {
      enable = true;
      settings = unbound // {
        server = unbound.server // lib.mapAttrs (_: lib.mkDefault) (lib.getAttrs starter unbound.server);
      };
    };
    # Ordering: ordering.nix.
  };
}

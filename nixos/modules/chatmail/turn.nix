# coturn for calls. Clients never see the secret: chatmail-metadata derives short-lived
# credentials from it (TURN REST API, use-auth-secret), and coturn checks them.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg settings paths;
in
{
  config = lib.mkIf (cfg.enable && cfg.turn.enable) {
    services.coturn =
      let
        turn = import ./config/turn.nix { inherit settings paths; };
      in
      {
        enable = true;
        inherit (turn)
          realm
          use-auth-secret
          static-auth-secret-file
          listening-port
          no-tls
          no-dtls
          no-cli
          ;
        min-port = lib.mkDefault turn.min-port;
        max-port = lib.mkDefault turn.max-port;
        extraConfig = lib.concatLines turn.extraLines;
      };

    # chatmail-metadata gets the secret as a systemd credential (config/units.nix); chatmail.ini's
    # turn_secret_file names it (config/paths-nixos.nix).

    # The secret itself is made by the chatmail-turn-secret one-shot (config/units.nix,
    # daemons.nix), readable by coturn's group only.
  };
}

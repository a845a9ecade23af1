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
  secret = paths.turnSecretFile;
  secretDir = builtins.dirOf secret;
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

    # The secret is made once, readable by coturn's group only.
    systemd.services.chatmail-turn-secret = {
      description = "TURN secret of the chatmail relay";
      wantedBy = [ "multi-user.target" ];
      before = [
        "coturn.service"
        "chatmail-metadata.service"
      ];
      requiredBy = [
        "coturn.service"
        "chatmail-metadata.service"
      ];
      path = [ pkgs.openssl ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0027";
        PrivateNetwork = true;
        PrivateTmp = true;
        ProtectHome = true;
        NoNewPrivileges = true;
      };
      script = ''
        if [ ! -s ${lib.escapeShellArg secret} ]; then
          install -d -m 0750 -g turnserver ${lib.escapeShellArg secretDir}
          openssl rand -hex 32 > ${lib.escapeShellArg secret}.tmp
          chgrp turnserver ${lib.escapeShellArg secret}.tmp
          chmod 0440 ${lib.escapeShellArg secret}.tmp
          mv ${lib.escapeShellArg secret}.tmp ${lib.escapeShellArg secret}
        fi
      '';
    };
  };
}

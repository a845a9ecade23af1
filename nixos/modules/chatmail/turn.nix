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
  inherit (common) cfg settings;
  secret = cfg.turn.secretFile;
  secretDir = builtins.dirOf secret;
in
{
  config = lib.mkIf (cfg.enable && cfg.turn.enable) {
    services.coturn = {
      enable = true;
      realm = cfg.domain;
      use-auth-secret = true;
      static-auth-secret-file = secret;
      listening-port = settings.turn_port;
      # coturn's defaults, named here because the firewall opens this range.
      min-port = lib.mkDefault 49152;
      max-port = lib.mkDefault 65535;
      # Plain TURN over UDP/TCP only: calls are end-to-end encrypted anyway.
      no-tls = true;
      no-dtls = true;
      no-cli = true;
      # Relays calls to the internet only, never to this host's or its network's services.
      extraConfig = ''
        no-multicast-peers
        no-loopback-peers
        denied-peer-ip=0.0.0.0-0.255.255.255
        denied-peer-ip=10.0.0.0-10.255.255.255
        denied-peer-ip=100.64.0.0-100.127.255.255
        denied-peer-ip=127.0.0.0-127.255.255.255
        denied-peer-ip=169.254.0.0-169.254.255.255
        denied-peer-ip=172.16.0.0-172.31.255.255
        denied-peer-ip=192.168.0.0-192.168.255.255
      '';
    };

    # chatmail-metadata gets the secret as a systemd credential (see config/units.nix).
    services.chatmail.settings.turn_secret_file = "/run/credentials/chatmail-metadata.service/turn-secret";

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

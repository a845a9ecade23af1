# The chatmaild daemons, each a sandboxed systemd service running as vmail:
#   doveauth             accounts: answers Dovecot's Lua passdb/userdb, creates an account
#                        on the first login (writes under mailboxes_dir)
#   filtermail           outgoing filter: before-queue proxy of submission; only OpenPGP
#                        encrypted mail may leave
#   filtermail-incoming  incoming filter: before-queue proxy of port 25
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg paths chatmailIni;

  # What every daemon gets: no privileges, a read-only system, network only to loopback
  # services and DNS. Each unit below adds its exceptions, with the reason.
  hardening = {
    User = paths.vmailUser;
    Group = paths.vmailUser;
    UMask = "0077";
    Restart = "always";
    RestartSec = "5s";

    CapabilityBoundingSet = [ "" ];
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
  };

  daemon = description: exe: args: extra: {
    inherit description;
    wantedBy = [ "multi-user.target" ];
    after = [ "network.target" ];
    restartTriggers = [ chatmailIni ];
    serviceConfig = hardening // extra // {
      ExecStart = lib.escapeShellArgs ([ (lib.getExe' cfg.package exe) ] ++ args);
    };
  };

  filtermail =
    direction:
    daemon "chatmail ${direction} filter" "filtermail" [ paths.chatmailIni direction ] { };
in
{
  config = lib.mkIf cfg.enable {
    environment.etc."chatmail/chatmail.ini".source = chatmailIni;

    systemd.services.doveauth =
      daemon "chatmail account service for Dovecot" "doveauth"
        [
          "--token-file"
          paths.doveauthTokenFile
          paths.chatmailIni
        ]
        {
          # The token file lives here: readable by vmail only, which is also the user of
          # Dovecot's auth workers.
          RuntimeDirectory = "doveauth";
          RuntimeDirectoryMode = "0700";
          # Accounts are directories under mailboxes_dir; the rest of /home stays hidden.
          ProtectHome = "tmpfs";
          BindPaths = [ paths.mailboxesDir ];
        }
      // {
        before = [ "dovecot.service" ];
      };

    systemd.services.filtermail = filtermail "outgoing";
    systemd.services.filtermail-incoming = filtermail "incoming";
  };
}

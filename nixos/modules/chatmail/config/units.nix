# The systemd units of the chatmaild daemons as data (builtins only), so that NixOS and the
# lab's sandbox scoring (`systemd-analyze security --offline=yes` on unit files rendered from
# this set) see the same sandbox.
#
#   settings  chatmail.ini keys (defaults merged)
#   paths     chatmailIni, mailboxesDir, vmailUser, doveauthTokenFile, metadataSocket,
#             lastloginSocket, turnSecretFile (the TURN secret; null when TURN is off)
#   exe       script name -> absolute path of that console script
#
# Result: unit name -> { description; serviceConfig; timerConfig? }. An entry with
# timerConfig is a oneshot started by its timer instead of at boot.
{
  settings,
  paths,
  exe,
}:
let
  dirOf' = path: builtins.dirOf path;
  baseName = path: builtins.baseNameOf path;
  cmd = words: builtins.concatStringsSep " " words;

  # What every daemon gets: no privileges, a read-only system, no devices, no kernel knobs,
  # only the system calls a service needs. Each unit below adds its exceptions, with the
  # reason. Mirrors nixpkgs' postfix-tlspol unit.
  hardening = {
    User = paths.vmailUser;
    Group = paths.vmailUser;
    UMask = "0077";

    CapabilityBoundingSet = [ "" ];
    AmbientCapabilities = [ "" ];
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    PrivateUsers = true;
    PrivateMounts = true;
    ProtectClock = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RemoveIPC = true;
    KeyringMode = "private";
    RestrictAddressFamilies = [ "AF_UNIX" ];
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
    SystemCallErrorNumber = "EPERM";
  };

  # Long-running daemons come back after a crash.
  daemon = hardening // {
    Restart = "always";
    RestartSec = "5s";
  };

  # Loopback only: no packets to or from anywhere else, even if the daemon is misled.
  loopbackOnly = {
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    IPAddressDeny = "any";
    IPAddressAllow = "localhost";
  };

  # No network at all (unix sockets on the file system still work).
  noNetwork = {
    PrivateNetwork = true;
    IPAddressDeny = "any";
  };

  # The mailboxes, and nothing else of /home.
  mailboxes = {
    ProtectHome = "tmpfs";
    BindPaths = [ paths.mailboxesDir ];
  };

  # A unix socket Dovecot's imap and lmtp processes (which run as the mail user) connect to:
  # the directory belongs to the mail user and its group; nobody else may enter.
  socketDir = socket: {
    RuntimeDirectory = baseName (dirOf' socket);
    RuntimeDirectoryMode = "0750";
  };

  filtermail = direction: {
    description = "chatmail ${direction} filter (only OpenPGP-encrypted mail passes)";
    serviceConfig = daemon // {
      ExecStart = cmd [
        (exe "filtermail")
        paths.chatmailIni
        direction
      ];
      # Outgoing mail goes to other relays (SMTP, HTTPS) and needs DNS.
      RestrictAddressFamilies = [
        "AF_INET"
        "AF_INET6"
        "AF_UNIX"
      ];
    };
  };

  # Daily jobs run once, as the mail user, and read chatmail.ini.
  daily = description: words: extra: {
    inherit description;
    serviceConfig =
      hardening
      // noNetwork
      // mailboxes
      // {
        Type = "oneshot";
        ExecStart = cmd words;
      }
      // extra;
    timerConfig = {
      OnCalendar = "daily";
      Persistent = true;
      RandomizedDelaySec = "1h";
    };
  };
in
{
  doveauth = {
    description = "chatmail accounts for Dovecot (an account is created on its first login)";
    serviceConfig =
      daemon
      // loopbackOnly
      // mailboxes
      // {
        ExecStart = cmd [
          (exe "doveauth")
          "--token-file"
          paths.doveauthTokenFile
          paths.chatmailIni
        ];
        # The token file lives here: readable by the mail user only, which is also the user
        # of Dovecot's auth workers.
        RuntimeDirectory = baseName (dirOf' paths.doveauthTokenFile);
        RuntimeDirectoryMode = "0700";
      };
  };

  filtermail = filtermail "outgoing";
  filtermail-incoming = filtermail "incoming";

  chatmail-metadata = {
    description = "chatmail IMAP METADATA and push notifications (Dovecot dict)";
    serviceConfig =
      daemon
      // mailboxes
      // socketDir paths.metadataSocket
      // {
        ExecStart = cmd [
          (exe "chatmail-metadata")
          paths.chatmailIni
          "--socket"
          paths.metadataSocket
        ];
        # Push notifications go to the notification proxy over HTTPS (DNS included).
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
      }
      # The TURN secret (for short-lived TURN credentials) is handed over by systemd, which
      # reads it as root: it appears as $CREDENTIALS_DIRECTORY/turn-secret, i.e.
      # /run/credentials/chatmail-metadata.service/turn-secret, and the file itself stays
      # readable by the TURN server only.
      // (
        if paths.turnSecretFile or null != null then
          { LoadCredential = [ "turn-secret:${paths.turnSecretFile}" ]; }
        else
          { }
      );
  };

  chatmail-lastlogin = {
    description = "chatmail last-login recorder (Dovecot dict)";
    serviceConfig =
      daemon
      // noNetwork
      // mailboxes
      // socketDir paths.lastloginSocket
      // {
        ExecStart = cmd [
          (exe "chatmail-lastlogin")
          paths.chatmailIni
          "--socket"
          paths.lastloginSocket
        ];
      };
  };

  chatmail-newemail = {
    description = "chatmail /new: suggests a fresh address and password (behind nginx)";
    serviceConfig =
      daemon
      // loopbackOnly
      // {
        ExecStart = cmd [
          (exe "chatmail-newemail")
          paths.chatmailIni
        ];
      };
  };

  # Removes old mail and unused accounts (dry run without --remove).
  chatmail-expire = daily "chatmail expiry of old mail and inactive accounts" [
    (exe "chatmail-expire")
    paths.chatmailIni
    "--remove"
  ] { };

  # Reads only: statistics of mailbox sizes and logins, printed to the journal.
  chatmail-fsreport =
    daily "chatmail daily storage and login report"
      [
        (exe "chatmail-fsreport")
        paths.chatmailIni
      ]
      {
        BindPaths = [ ];
        BindReadOnlyPaths = [ paths.mailboxesDir ];
      };
}

# The systemd side of a relay as data (builtins only): every chatmaild unit and timer, the
# one-shots that make the secrets (TURN, DKIM), the tmpfiles rules, and the start-up order of
# the services around them. NixOS turns this into systemd.services/timers/tmpfiles
# (daemons.nix, turn.nix, opendkim.nix, ordering.nix); the lab writes the very same data as
# unit files into each relay, where Debian's systemd runs them (tests/lab/units.py).
#
#   settings  chatmail.ini keys (defaults merged)
#   paths     chatmailIni, mailboxesDir, sieveBinDir, vmailUser, doveauthTokenFile, metadataSocket,
#             lastloginSocket, turnSecretFile (the TURN secret; null when TURN is off),
#             turnGroup, dkimSocket (null: no DKIM), dkimKeyFile, dkimSelector, dkimUser,
#             dkimKeyGenerated (true: generate dkimKeyFile on first start), tlsUnit and
#             resolverUnit (unit names, or null when there is none), tlsMode, metricsDir
#             (the daemons' counters, directly under /var/lib), metricsTextfileDir (where
#             chatmail-metrics writes the node exporter's textfile; null: metrics off),
#             metricsInterval, irohRelayExe (the iroh-relay binary; null: no iroh relay on
#             this host) and irohRelayConfig (its TOML file, ./iroh-relay.nix's `config`)
#   exe       script name -> absolute path of that console script
#
# Result:
#   services  unit name -> { description; serviceConfig; after/before/wants/requiredBy/
#             wantedBy (lists of unit names); script and path (one-shots: a POSIX shell
#             snippet, and the programs it needs by package name); timerConfig? }.
#             ExecStart is an argv list, escaped by whoever writes the unit file (NixOS:
#             utils.escapeSystemdExecArgs; the lab the same rules). An entry with
#             timerConfig is started by its timer instead of at boot.
#   sockets   unit name -> { description; wantedBy; listenStreams; socketConfig } (NixOS:
#             systemd.sockets; the lab writes them as .socket files)
#   tmpfiles  tmpfiles.d lines
#   dovecotService, opendkimService  serviceConfig for those units (NixOS's and Debian's)
#   ordering  service name (postfix, dovecot, nginx) -> units it wants and starts after
#   nodeExporter  null, or with metrics on, what the node exporter needs to read the textfile:
#             { enabledCollectors; extraFlags; listenAddress; port } (NixOS:
#             services.prometheus.exporters.node; the lab: a drop-in for Debian's unit)
{
  settings,
  paths,
  exe,
}:
let
  dirOf' = path: builtins.dirOf path;
  baseName = path: builtins.baseNameOf path;
  optional = cond: x: if cond then [ x ] else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  # POSIX shell quoting (what escapeShellArg of nixpkgs' lib does).
  q = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  resolver = optional (paths.resolverUnit or null != null) paths.resolverUnit;
  tlsUnits = optional (paths.tlsUnit or null != null) paths.tlsUnit;
  dkim = paths.dkimSocket or null != null;
  turn = paths.turnSecretFile or null != null;
  metrics = paths.metricsTextfileDir or null != null;
  textfileDir = paths.metricsTextfileDir;
  iroh = paths.irohRelayExe or null != null;

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

  # Long-running daemons come back after a crash, and start at boot. They resolve MX, TLS
  # policy and DKIM records through the local resolver.
  daemon = extra: {
    after = [ "network.target" ] ++ resolver;
    wants = resolver;
    wantedBy = [ "multi-user.target" ];
  } // extra;
  restarting = hardening // {
    Restart = "always";
    RestartSec = "5s";
  };

  # Daemons needed only now and then are started by their socket (see `sockets` below) and
  # leave after this long with no open connection and nothing pending: an idle relay then
  # runs no Python for them at all. A connection made meanwhile waits in systemd's socket.
  idleExitSeconds = "300";
  onDemand = restarting // {
    # Leaving when idle is a clean exit; only a crash brings the daemon straight back.
    Restart = "on-failure";
  };
  exitWhenIdle = [
    "--exit-when-idle"
    idleExitSeconds
  ];
  # The socket unit's side of an on-demand daemon: it asks for the service.
  byItsSocket = name: {
    requires = [ "${name}.socket" ];
    after = [ "network.target" ] ++ resolver ++ [ "${name}.socket" ];
  };
  # A unix socket Dovecot's imap and lmtp processes (which run as the mail user) connect to.
  # The directory is systemd's (root, 0755); the socket itself is the mail user's and its
  # group's only.
  dovecotSocket = path: description: {
    inherit description;
    wantedBy = [ "sockets.target" ];
    listenStreams = [ path ];
    socketConfig = {
      SocketUser = paths.vmailUser;
      SocketGroup = paths.vmailUser;
      SocketMode = "0660";
      DirectoryMode = "0755";
      # Every imap and lmtp process connects after a restart (the daemon's own backlog).
      Backlog = 1024;
    };
  };
  # Dovecot's passdb and dicts connect to these as soon as it serves a client.
  beforeDovecot = {
    before = [ "dovecot.service" ];
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

  # The directory where each daemon keeps its event counters (chatmaild.metrics): the same
  # StateDirectory in every unit that counts, all of them the mail user's, and world-readable
  # so that the node exporter (another user) can read the textfile written there.
  counting =
    let
      m = builtins.match "/var/lib/([^/]+)" paths.metricsDir;
    in
    if m == null then
      throw "units.nix: paths.metricsDir (${paths.metricsDir}) must be a directory directly under /var/lib"
    else
      {
        StateDirectory = builtins.head m;
        StateDirectoryMode = "0755";
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

  filtermail = direction: daemon {
    description = "chatmail ${direction} filter (only OpenPGP-encrypted mail passes)";
    # The filters read a recipient's settings (enforceE2EEincoming) in the mailboxes and
    # write nothing there.
    serviceConfig = restarting // counting // {
      ProtectHome = "tmpfs";
      BindReadOnlyPaths = [ paths.mailboxesDir ];
      ExecStart = [
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
  daily = description: argv: extra: {
    inherit description;
    after = [ "network.target" ];
    serviceConfig =
      hardening
      // noNetwork
      // mailboxes
      // {
        Type = "oneshot";
        ExecStart = argv;
      }
      // extra;
    timerConfig = {
      OnCalendar = "daily";
      Persistent = true;
      RandomizedDelaySec = "1h";
    };
  };

  # A one-shot that makes a secret as root before its users start, once.
  secretMaker = {
    Type = "oneshot";
    RemainAfterExit = true;
    PrivateNetwork = true;
    PrivateTmp = true;
    ProtectHome = true;
    NoNewPrivileges = true;
  };

  secret = paths.turnSecretFile;
  key = paths.dkimKeyFile;

  # The iroh relay forwards packets between devices it knows nothing about but their keys;
  # it needs no file, no state and no peer but nginx on loopback. Without RUST_LOG it logs
  # errors only (no addresses or keys of the devices); its metrics count what it relayed.
  irohRelay = daemon {
    description = "iroh relay for Delta Chat realtime channels (behind nginx)";
    # It resolves nothing.
    after = [ "network.target" ];
    wants = [ ];
    serviceConfig =
      restarting
      // loopbackOnly
      // {
        # A user of its own, made when it starts: it owns nothing on disk.
        DynamicUser = true;
        User = "iroh-relay";
        Group = "iroh-relay";
        ExecStart = [
          paths.irohRelayExe
          "--config-path"
          paths.irohRelayConfig
        ];
      };
  };
in
{
  services = {
    doveauth = daemon (beforeDovecot // {
      description = "chatmail accounts for Dovecot (an account is created on its first login)";
      serviceConfig =
        restarting
        // loopbackOnly
        // mailboxes
        // counting
        // {
          ExecStart = [
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
    });

    filtermail = filtermail "outgoing";
    filtermail-incoming = filtermail "incoming";

    # Socket-activated (see `sockets` below): it also starts at boot, to send the pushes
    # queued before a restart, and leaves when idle once none is pending.
    chatmail-metadata = daemon (beforeDovecot // byItsSocket "chatmail-metadata" // {
      description = "chatmail IMAP METADATA and push notifications (Dovecot dict)";
      serviceConfig =
        onDemand
        // mailboxes
        // counting
        // {
          ExecStart = [
            (exe "chatmail-metadata")
            paths.chatmailIni
            "--socket"
            paths.metadataSocket
          ] ++ exitWhenIdle;
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
        // optionalAttrs turn { LoadCredential = [ "turn-secret:${secret}" ]; };
    });

    # Socket-activated: started by the first login's write (which Dovecot does not wait
    # for), gone when no imap process holds a connection.
    chatmail-lastlogin = daemon (beforeDovecot // byItsSocket "chatmail-lastlogin" // {
      description = "chatmail last-login recorder (Dovecot dict)";
      wantedBy = [ ];
      serviceConfig =
        onDemand
        // noNetwork
        // mailboxes
        // {
          ExecStart = [
            (exe "chatmail-lastlogin")
            paths.chatmailIni
            "--socket"
            paths.lastloginSocket
          ] ++ exitWhenIdle;
        };
    });

    # Socket-activated: only someone setting up an account needs it.
    chatmail-newemail = daemon (byItsSocket "chatmail-newemail" // {
      description = "chatmail /new: suggests a fresh address and password (behind nginx)";
      wantedBy = [ ];
      serviceConfig =
        onDemand
        // loopbackOnly
        // {
          ExecStart = [
            (exe "chatmail-newemail")
            paths.chatmailIni
          ] ++ exitWhenIdle;
        };
    });

    # Removes old mail and unused accounts (dry run without --remove).
    chatmail-expire = daily "chatmail expiry of old mail and inactive accounts" [
      (exe "chatmail-expire")
      paths.chatmailIni
      "--remove"
    ] counting;

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
  # Reads only (the counters, the mailboxes' file names) and writes one file: the metrics for
  # the node exporter's textfile collector, renamed into place so a scrape never sees half.
  // optionalAttrs metrics {
    chatmail-metrics = {
      description = "chatmail metrics for the node exporter's textfile collector";
      after = [ "network.target" ];
      serviceConfig =
        hardening
        // noNetwork
        // counting
        // {
          Type = "oneshot";
          ProtectHome = "tmpfs";
          BindReadOnlyPaths = [ paths.mailboxesDir ];
          ExecStart = [
            (exe "chatmail")
            "--config"
            paths.chatmailIni
            "metrics"
            "--textfile"
            textfileDir
          ];
        }
        # A textfile directory of the operator's own: made for the mail user by tmpfiles.
        // optionalAttrs (textfileDir != paths.metricsDir) { ReadWritePaths = [ textfileDir ]; };
      timerConfig = {
        OnBootSec = "1min";
        OnUnitActiveSec = paths.metricsInterval;
        AccuracySec = "5s";
      };
    };
  }
  # The TURN secret is made once, readable by coturn's group only; chatmail-metadata gets it
  # as a credential.
  // optionalAttrs turn {
    chatmail-turn-secret = {
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
      path = [ "openssl" ];
      serviceConfig = secretMaker // {
        UMask = "0027";
      };
      script = ''
        if [ ! -s ${q secret} ]; then
          install -d -m 0750 -g ${q paths.turnGroup} ${q (dirOf' secret)}
          openssl rand -hex 32 > ${q "${secret}.tmp"}
          chgrp ${q paths.turnGroup} ${q "${secret}.tmp"}
          chmod 0440 ${q "${secret}.tmp"}
          mv ${q "${secret}.tmp"} ${q secret}
        fi
      '';
    };
  }
  # The DKIM key is made once when the operator gives none (a given key is used as it is, and
  # nothing else is generated), readable by OpenDKIM only; its DNS record goes to the journal.
  // optionalAttrs iroh { iroh-relay = irohRelay; }
  // optionalAttrs (dkim && paths.dkimKeyGenerated) {
    chatmail-dkim-key = {
      description = "DKIM key of the chatmail relay";
      wantedBy = [ "multi-user.target" ];
      before = [ "opendkim.service" ];
      requiredBy = [ "opendkim.service" ];
      path = [
        "opendkim"
        "openssl"
      ];
      serviceConfig = secretMaker // {
        UMask = "0077";
      };
      script = ''
        if [ ! -s ${q key} ]; then
          work=$(mktemp -d)
          opendkim-genkey -b 2048 -D "$work" -s ${q paths.dkimSelector} -d ${q settings.mail_domain}
          install -d -m 0700 -o ${q paths.dkimUser} -g ${q paths.dkimUser} ${q (dirOf' key)}
          install -m 0600 -o ${q paths.dkimUser} -g ${q paths.dkimUser} "$work/"${q "${paths.dkimSelector}.private"} ${q "${key}.tmp"}
          mv ${q "${key}.tmp"} ${q key}
          echo "Generated the DKIM key ${key}. Publish this DNS record:"
          cat "$work/"${q "${paths.dkimSelector}.txt"}
          rm -r "$work"
        fi
      '';
    };
  };

  # These sockets belong to systemd, not to the daemons: systemd starts a daemon on the first
  # connection, and while it is down (left when idle, a crash, a changed chatmail.ini)
  # connections wait in the backlog instead of being refused, so no delivery loses its push
  # notification. The daemons take the socket from LISTEN_FDS.
  sockets = {
    chatmail-metadata = dovecotSocket paths.metadataSocket "chatmail IMAP METADATA socket (Dovecot dict)";
    chatmail-lastlogin = dovecotSocket paths.lastloginSocket "chatmail last-login socket (Dovecot dict)";
    # nginx proxies /new here.
    chatmail-newemail = {
      description = "chatmail /new socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ settings.newemail_listen ];
    };
  };

  tmpfiles = [
    # <mailboxes_dir>/<address>/ holds each account: its password file and its maildir.
    # Its parent first: one made by tmpfiles itself would be root's, and systemd-tmpfiles
    # refuses to go on from the mail user's home into a root-owned directory.
    "d ${dirOf' paths.mailboxesDir} 0700 ${paths.vmailUser} ${paths.vmailUser} - -"
    "d ${paths.mailboxesDir} 0700 ${paths.vmailUser} ${paths.vmailUser} - -"
    # LMTP compiles the dedupe Sieve script (./dedupe.sieve) into here on first use.
    "d ${paths.sieveBinDir} 0700 ${paths.vmailUser} ${paths.vmailUser} - -"
  ]
  ++ optional (
    metrics && textfileDir != paths.metricsDir
  ) "d ${textfileDir} 0755 ${paths.vmailUser} ${paths.vmailUser} - -";

  # The node exporter reads the textfile; only on loopback unless the operator says otherwise
  # (NixOS: these are mkDefault).
  nodeExporter =
    if metrics then
      {
        enabledCollectors = [ "textfile" ];
        extraFlags = [ "--collector.textfile.directory=${textfileDir}" ];
        listenAddress = "127.0.0.1";
        port = 9100;
      }
    else
      null;

  # Start-up order between the relay's services:
  #   certificate unit -> Postfix, Dovecot, nginx
  #   doveauth, chatmail-metadata, chatmail-lastlogin -> Dovecot (passdb and dicts)
  #   postfix-setup (NixOS: creates private/) -> Dovecot (its sockets live there)
  #   Dovecot, the filters, OpenDKIM, unbound -> Postfix
  #   iroh-relay -> nginx (which proxies to it)
  ordering = {
    postfix =
      tlsUnits
      ++ [
        "dovecot.service"
        "filtermail.service"
        "filtermail-incoming.service"
      ]
      ++ optional dkim "opendkim.service"
      ++ resolver;
    dovecot = tlsUnits ++ [
      "postfix-setup.service"
      "doveauth.service"
      "chatmail-metadata.socket"
      "chatmail-metadata.service"
      "chatmail-lastlogin.socket"
    ];
    # With ACME, nginx must come first (it answers the HTTP-01 challenge); nixpkgs' ACME
    # module orders the certificate unit after it.
    nginx = (if paths.tlsMode or null == "acme" then [ ] else tlsUnits) ++ optional iroh "iroh-relay.service";
  };

  # Dovecot's unit stops only its master process: deliveries and IMAP sessions in progress
  # finish (shutdown_clients = no in config/dovecot.nix) instead of being cut off after the
  # message was saved but before LMTP's 250, which made Postfix deliver it a second time.
  dovecotService = {
    KillMode = "process";
  };

  # OpenDKIM leaks memory over time: it comes back after a crash, and a daily restart keeps
  # it small (as the reference relay runs it).
  opendkimService = {
    Restart = "always";
    RestartSec = "5s";
    RuntimeMaxSec = "1d";
  };
}

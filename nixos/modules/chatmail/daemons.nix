# The chatmaild daemons, their timers, the one-shots that make the secrets and the tmpfiles
# rules, all from ./config/units.nix (the lab writes the same data into unit files):
#   doveauth             accounts: answers Dovecot's Lua passdb/userdb, creates an account on
#                        the first login
#   filtermail           outgoing filter: only OpenPGP-encrypted mail may leave
#   filtermail-incoming  incoming filter (port 25 and /mxdeliv)
#   chatmail-metadata    IMAP METADATA dict for Dovecot; device tokens and push notifications
#   chatmail-lastlogin   records the day of each IMAP login (Dovecot dict)
#   chatmail-newemail    /new: suggests an address and password to new users
#                        (these three are socket-activated: systemd holds their sockets, starts
#                        them on the first connection, and they leave when idle)
#   chatmail-expire      daily: removes old mail and unused accounts
#   chatmail-fsreport    daily: storage and login statistics in the journal
#   chatmail-metrics     with metrics.enable, every metrics.interval: `chatmail metrics` writes
#                        the node exporter's textfile (./metrics.nix wires the exporter)
#   chatmail-turn-secret one-shot: the TURN secret (with turn.enable)
#   chatmail-dkim-key    one-shot: the DKIM key (with dkim.enable and no dkim.keyFile)
# The counting daemons share the StateDirectory /var/lib/chatmail-metrics (chatmail.ini
# metrics_dir). The package is also on PATH for the operator's `chatmail` command.
# chatmail-quota-expire has no unit: Dovecot runs it when a mailbox is over quota.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg chatmailIni units;

  # Daily jobs are started by their timer.
  isTimed = unit: unit ? timerConfig;

  service =
    _name: unit:
    {
      inherit (unit) description;
      serviceConfig =
        unit.serviceConfig
        // lib.optionalAttrs (unit.serviceConfig ? ExecStart) {
          ExecStart = utils.escapeSystemdExecArgs unit.serviceConfig.ExecStart;
        };
      # Every daemon reads chatmail.ini at start only.
      restartTriggers = [ chatmailIni ];
    }
    // lib.getAttrs (lib.intersectLists (lib.attrNames unit) [
      "after"
      "before"
      "wants"
      "requires"
      "requiredBy"
      "wantedBy"
      "script"
    ]) unit
    // lib.optionalAttrs (unit ? path) { path = map (name: pkgs.${name}) unit.path; };

  timer = _name: unit: {
    inherit (unit) description timerConfig;
    wantedBy = [ "timers.target" ];
  };
in
{
  config = lib.mkIf cfg.enable {
    environment.etc."chatmail/chatmail.ini".source = chatmailIni;
    environment.systemPackages = [
      # The operator's `chatmail` command (dns, status, accounts) and the daily jobs, on PATH.
      cfg.package
      # Pigeonhole, which runs dedupe.sieve in LMTP (config/dovecot.nix). nixpkgs' Dovecot 2.4
      # loads plugins, and the settings plugin that makes `sieve_*` known to its config
      # parser, from /run/current-system/sw/lib/dovecot/modules: it must be in the system
      # path. The Pigeonhole of the package in use is the attribute nixpkgs' dovecot2 module
      # takes its sievec from; a package without it gets nixpkgs' own.
      (config.services.dovecot2.package.passthru.dovecot_pigeonhole or pkgs.dovecot_pigeonhole)
    ];

    systemd.services = lib.mapAttrs service units.services;
    systemd.timers = lib.mapAttrs timer (lib.filterAttrs (_: isTimed) units.services);
    # The on-demand daemons' sockets: open while a daemon is down, idle or restarting.
    systemd.sockets = units.sockets;
    systemd.tmpfiles.rules = units.tmpfiles;
  };
}

# The chatmaild daemons, one sandboxed systemd unit each, from ./config/units.nix (which the
# lab renders into unit files for `systemd-analyze security`):
#   doveauth             accounts: answers Dovecot's Lua passdb/userdb, creates an account on
#                        the first login
#   filtermail           outgoing filter: only OpenPGP-encrypted mail may leave
#   filtermail-incoming  incoming filter (port 25 and /mxdeliv)
#   chatmail-metadata    IMAP METADATA dict for Dovecot; device tokens and push notifications
#   chatmail-lastlogin   records the day of each IMAP login (Dovecot dict)
#   chatmail-newemail    /new: suggests an address and password to new users
#   chatmail-expire      daily: removes old mail and unused accounts
#   chatmail-fsreport    daily: storage and login statistics in the journal
# The package is also on PATH for the operator's `chatmail` command.
# chatmail-quota-expire has no unit: Dovecot runs it when a mailbox is over quota.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg chatmailIni units;

  resolver = lib.optional cfg.unbound.enable "unbound.service";

  # Daily jobs are started by their timer; everything else runs all the time.
  isTimed = unit: unit ? timerConfig;

  service =
    name: unit:
    {
      inherit (unit) description serviceConfig;
      # They resolve MX, TLS policy and DKIM records through the local resolver.
      after = [ "network.target" ] ++ resolver;
      wants = resolver;
      # Every daemon reads chatmail.ini at start only.
      restartTriggers = [ chatmailIni ];
    }
    // lib.optionalAttrs (!isTimed unit) { wantedBy = [ "multi-user.target" ]; }
    // lib.optionalAttrs (name == "doveauth" || name == "chatmail-metadata" || name == "chatmail-lastlogin") {
      # Dovecot's passdb and dicts connect to these as soon as it serves a client.
      before = [ "dovecot.service" ];
    };

  timer = _name: unit: {
    inherit (unit) description timerConfig;
    wantedBy = [ "timers.target" ];
  };
in
{
  config = lib.mkIf cfg.enable {
    environment.etc."chatmail/chatmail.ini".source = chatmailIni;
    # The operator's `chatmail` command (dns, status, accounts) and the daily jobs, on PATH.
    environment.systemPackages = [ cfg.package ];

    systemd.services = lib.mapAttrs service units;
    systemd.timers = lib.mapAttrs timer (lib.filterAttrs (_: isTimed) units);
  };
}

# Postfix: main.cf, master.cf and the regexp tables, all from ./config/postfix.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg postfix postfixMapFiles;
  # Starter values of main.cf: tuning and logging an operator may change with a plain
  # definition, e.g. services.postfix.settings.main.maximal_queue_lifetime = "5d". Every other
  # key is what the relay needs to work (TLS policy, filters, restrictions, maps, paths; the
  # size limit must match chatmail.ini's max_message_size): assigned plainly, so that a
  # change takes an explicit lib.mkForce.
  starter = [
    "append_dot_mydomain"
    "biff"
    "mailbox_size_limit"
    "maximal_queue_lifetime"
    "recipient_delimiter"
    "smtp_tls_loglevel"
    "smtpd_peername_lookup"
    "smtpd_tls_exclude_ciphers"
    "tls_preempt_cipherlist"
  ];
in
{
  config = lib.mkIf cfg.enable {
    services.postfix = {
      enable = true;
      settings.main = lib.mapAttrs (
        key: value: if lib.elem key starter then lib.mkDefault value else value
      ) postfix.main;
      # Includes submission (587) and submissions (465): enableSubmission(s) stay off.
      settings.master = postfix.master;
    };

    # Referenced from main.cf/master.cf as regexp:/etc/chatmail/postfix/<name>.
    environment.etc = lib.mapAttrs' (
      name: file: lib.nameValuePair "chatmail/postfix/${name}" { source = file; }
    ) postfixMapFiles;

    # Ordering: ordering.nix.
    systemd.services.postfix = {
      reloadTriggers = lib.attrValues postfixMapFiles;
    };
  };
}

# What the relay keeps about its users beyond their mail: the journal in memory only, for a
# few days, and the kill switch for new accounts.
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.chatmail;
in
{
  config = lib.mkIf cfg.enable {
    services.journald.storage = lib.mkIf cfg.journald.volatile (lib.mkDefault "volatile");
    services.journald.extraConfig = lib.mkIf (cfg.journald.maxRetention != null) ''
      MaxRetentionSec=${cfg.journald.maxRetention}
    '';

    # The kill switch for new accounts (services.chatmail.newAccounts) is in users.nix.
  };
}

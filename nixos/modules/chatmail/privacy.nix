# What the relay keeps about its users beyond their mail: the journal in memory only, for a
# few days (./config/journald.nix, which the lab writes into its relays' journald.conf.d),
# and the kill switch for new accounts.
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.chatmail;
  journald = (import ./config/journald.nix).render { inherit (cfg.journald) volatile maxRetention; };
in
{
  config = lib.mkIf cfg.enable {
    services.journald.storage = lib.mkIf (journald.Storage != null) (lib.mkDefault journald.Storage);
    services.journald.extraConfig = lib.mkIf (journald.MaxRetentionSec != null) ''
      MaxRetentionSec=${journald.MaxRetentionSec}
    '';

    # The kill switch for new accounts (services.chatmail.newAccounts) is in users.nix.
  };
}

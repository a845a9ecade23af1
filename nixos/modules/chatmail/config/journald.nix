# journald as the relay wants it, as data (builtins only): the journal in memory only, kept
# for a short time, so that logs (which name addresses) never reach the disk and soon go.
#   defaults  the module's option defaults (services.chatmail.journald), given here once
#   render    { volatile, maxRetention } -> journald.conf [Journal] keys (null: leave the key
#             out); volatile keeps the journal in memory only, maxRetention is
#             MaxRetentionSec (null: journald's default)
# NixOS sets the keys through services.journald (privacy.nix); the lab writes them into a
# journald.conf.d drop-in.
let
  defaults = {
    volatile = true;
    maxRetention = "3d";
  };
in
{
  inherit defaults;
  render =
    {
      volatile ? defaults.volatile,
      maxRetention ? defaults.maxRetention,
    }:
    {
      Storage = if volatile then "volatile" else null;
      MaxRetentionSec = maxRetention;
    };
}

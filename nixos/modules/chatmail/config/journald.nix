# journald as the relay wants it, as data (builtins only): the journal in memory only, kept
# for a short time, so that logs (which name addresses) never reach the disk and soon go.
#   volatile      keep the journal in memory only
#   maxRetention  MaxRetentionSec, or null for journald's default
# Result: journald.conf [Journal] keys (null: leave the key out). NixOS sets them through
# services.journald (privacy.nix); the lab writes them into a journald.conf.d drop-in.
{
  volatile,
  maxRetention,
}:
{
  Storage = if volatile then "volatile" else null;
  MaxRetentionSec = maxRetention;
}

# Prometheus metrics: the node exporter reads the textfile that the chatmail-metrics timer
# (./config/units.nix, set up by ./daemons.nix) writes. Counting needs no switch: every daemon
# keeps its counters in the metrics directory (chatmail.ini metrics_dir), so `chatmail metrics`
# works by hand too; this file only wires the exporter, with what ./config/units.nix says it
# needs (the lab gives Debian's node exporter the same flags).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg units;
  node = units.nodeExporter;
in
{
  config = lib.mkIf (cfg.enable && cfg.metrics.enable && cfg.metrics.configureNodeExporter) {
    services.prometheus.exporters.node = {
      enable = true;
      # Lists merge with the operator's own collectors and flags.
      inherit (node) enabledCollectors extraFlags;
      # Loopback unless the operator opens it: node metrics are nobody else's business.
      listenAddress = lib.mkDefault node.listenAddress;
      port = lib.mkDefault node.port;
    };
  };
}

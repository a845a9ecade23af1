# The relay's own iroh relay, as data (builtins only).
#
# Delta Chat's realtime channels (webxdc) connect two devices over iroh (QUIC). When they
# cannot reach each other directly, or until hole punching has found a way, their packets go
# through an iroh relay: an HTTP service that forwards end-to-end encrypted packets between
# the devices connected to it, keyed by their public keys. A chatmail relay runs one and
# tells its users about it in IMAP METADATA (chatmail.ini `iroh_relay`).
#
# iroh-relay listens on loopback only, behind nginx, which proxies the paths iroh clients use
# (/relay, upgraded to a WebSocket-like stream, and the /ping, /generate_204 probes) from
# the relay's HTTPS site. It serves no STUN (the TURN server answers STUN) and no QUIC
# address discovery (that needs its own TLS endpoint on UDP); its metrics (packets and bytes
# relayed) are served on loopback.
#
#   settings  chatmail.ini keys (mail_domain)
#
# Result:
#   url        the URL advertised to clients for this relay's own iroh relay
#   listen     iroh-relay's HTTP address (loopback)
#   metrics    its Prometheus metrics address (loopback)
#   config     iroh-relay's TOML configuration (its --config-path), as data
#   locations  the nginx locations that reach it (services.nginx.virtualHosts.<n>.locations)
{ settings }:
let
  listen = "127.0.0.1:3340";
  metrics = "127.0.0.1:9092";
  upstream = {
    proxyPass = "http://${listen}";
  };
in
{
  inherit listen metrics;
  url = "https://${settings.mail_domain}";

  config = {
    enable_relay = true;
    http_bind_addr = listen;
    enable_stun = false;
    enable_quic_addr_discovery = false;
    enable_metrics = true;
    metrics_bind_addr = metrics;
  };

  locations = {
    # The relay connection itself: an HTTP/1.1 upgrade that then carries packets both ways
    # for as long as the client stays connected.
    "= /relay" = upstream // {
      proxyWebsockets = true;
      extraConfig = ''
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
        proxy_buffering off;
      '';
    };
    # Probes: a client measures its latency to each relay with these before it picks its
    # home relay.
    "= /ping" = upstream;
    "= /generate_204" = upstream;
  };
}

# Exactly the public ports of the enabled parts: SMTP between relays (25), submission (587
# STARTTLS, 465 TLS), IMAP (143 STARTTLS, 993 TLS); with nginx HTTP (80: redirects, ACME) and
# HTTPS (443, shared by ALPN with IMAP and SMTP); with TURN its port over UDP and TCP and the
# relay ports over UDP.
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.chatmail;
  turn = config.services.coturn;
in
{
  config = lib.mkIf (cfg.enable && cfg.openFirewall) {
    networking.firewall.allowedTCPPorts = [
      25
      143
      465
      587
      993
    ]
    ++ lib.optionals cfg.nginx.enable [
      80
      443
    ]
    ++ lib.optional cfg.turn.enable cfg.settings.turn_port;
    networking.firewall.allowedUDPPorts = lib.optional cfg.turn.enable cfg.settings.turn_port;
    networking.firewall.allowedUDPPortRanges = lib.optional cfg.turn.enable {
      from = turn.min-port;
      to = turn.max-port;
    };
  };
}

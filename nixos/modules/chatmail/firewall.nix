# Ports the relay serves: SMTP between relays (25), submission (587 STARTTLS, 465 TLS) and
# IMAP (143 STARTTLS, 993 TLS).
{
  config,
  lib,
  ...
}:
let
  cfg = config.services.chatmail;
in
{
  config = lib.mkIf (cfg.enable && cfg.openFirewall) {
    networking.firewall.allowedTCPPorts = [
      25
      143
      465
      587
      993
    ];
  };
}

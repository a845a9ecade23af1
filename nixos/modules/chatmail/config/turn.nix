# coturn for calls, as data (builtins only). Keys are coturn's own option names, which are
# also the names of nixpkgs' services.coturn options; `extraLines` go to its config file.
# Clients never see the secret: chatmail-metadata derives short-lived credentials from it
# (the TURN REST scheme, coturn's use-auth-secret).
#
#   paths  turnSecretFile (the shared secret, outside the Nix store)
{ settings, paths }:
{
  realm = settings.mail_domain;
  use-auth-secret = true;
  static-auth-secret-file = paths.turnSecretFile;
  listening-port = settings.turn_port;
  # coturn's defaults, named here because the firewall opens this range.
  min-port = 49152;
  max-port = 65535;
  # Plain TURN over UDP/TCP only: calls are end-to-end encrypted anyway.
  no-tls = true;
  no-dtls = true;
  no-cli = true;
  # Relays calls to the internet only, never to this host's or its network's services.
  extraLines = [
    "no-multicast-peers"
    "no-loopback-peers"
    "denied-peer-ip=0.0.0.0-0.255.255.255"
    "denied-peer-ip=10.0.0.0-10.255.255.255"
    "denied-peer-ip=100.64.0.0-100.127.255.255"
    "denied-peer-ip=127.0.0.0-127.255.255.255"
    "denied-peer-ip=169.254.0.0-169.254.255.255"
    "denied-peer-ip=172.16.0.0-172.31.255.255"
    "denied-peer-ip=192.168.0.0-192.168.255.255"
  ];
}

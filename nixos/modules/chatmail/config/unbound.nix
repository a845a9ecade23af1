# The relay's own DNS resolver, as data (builtins only): services.unbound.settings on NixOS.
# It resolves from the root servers itself (no forwarding to a third party) and validates
# DNSSEC, so MX, TLS and DKIM decisions never rest on a provider's resolver.
{ settings }:
let
  ipv6 = !settings.disable_ipv6;
in
{
  server =
    {
      # Never cache "no such record": another relay's freshly published DKIM key or MX must be
      # seen at once.
      cache-max-negative-ttl = 0;
      do-ip6 = ipv6;
      # Only this host asks.
      interface = [ "127.0.0.1" ] ++ (if ipv6 then [ "::1" ] else [ ]);
      access-control = [ "127.0.0.0/8 allow" ] ++ (if ipv6 then [ "::1/128 allow" ] else [ ]);
      hide-identity = true;
      hide-version = true;
      qname-minimisation = true;
    };
}

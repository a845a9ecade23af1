# What the relay's mail_domain names (builtins only): a DNS name, or an IPv4 address, which
# makes an IP-literal relay. Its addresses are `user@[a.b.c.d]`, Postfix must treat the
# bracketed literal as its own destination, and its host name is the reverse-pointer name
# (a bare number is no valid host name), as the reference relay does it.
mailDomain:
let
  octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  octets = builtins.match "${octet}\\.${octet}\\.${octet}\\.${octet}" mailDomain;
  ipv4 = octets != null;
  reversed = builtins.genList (i: builtins.elemAt octets (3 - i)) 4;
in
{
  inherit ipv4;
  # The domain part of the relay's addresses.
  literal = if ipv4 then "[${mailDomain}]" else mailDomain;
  # Postfix's myhostname: the domain, or e.g. 13.0.77.10.in-addr.arpa for 10.77.0.13.
  hostname = if ipv4 then builtins.concatStringsSep "." reversed + ".in-addr.arpa" else mailDomain;
}

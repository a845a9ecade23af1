# The relay's ACME certificate request, as data (builtins only): security.acme.certs.<domain>
# on NixOS (lego, HTTP-01 through nginx's webroot), and the lab's lego run against pebble.
#
#   paths  acmeWebroot (where nginx serves /.well-known/acme-challenge/ from on port 80)
{ settings, paths }:
let
  domain = settings.mail_domain;
in
{
  inherit domain;
  # The site's other names: the web pages, and the MTA-STS policy other relays fetch.
  extraDomainNames = [
    "www.${domain}"
    "mta-sts.${domain}"
  ];
  webroot = paths.acmeWebroot;
  # security.acme's default, named because the lab passes it to lego the same way.
  keyType = "ec256";
  # What reads the certificate and must reload when it is renewed. nginx is not listed:
  # nixpkgs' nginx module adds nginx.service itself for a vhost with useACMEHost.
  reloadServices = [
    "postfix.service"
    "dovecot.service"
  ];
}

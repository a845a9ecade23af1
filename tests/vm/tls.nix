# TLS of one relay with a certificate from ACME: the relay orders it from pebble (the fake
# ACME server of the NixOS test suite) through security.acme, answering HTTP-01 with nginx
# on port 80, and Postfix, Dovecot and nginx pick it up. A client then checks every public
# port against pebble's root:
#   993 (IMAPS) and 465 (SMTPS)       TLS 1.3, TLS 1.2 refused
#   143 (IMAP) and 587 (submission)   STARTTLS, TLS 1.3, TLS 1.2 refused
#   25 (SMTP between relays)          STARTTLS, TLS 1.2 and 1.3, TLS 1.1 refused
#   443                               ALPN imap -> Dovecot, ALPN smtp -> Postfix, else HTTPS
#                                     (/new, the MTA-STS policy)
#   80                                redirect to HTTPS
#
# Nodes: acme (pebble; its /etc/hosts maps every certificate name of the other nodes to
# their address, so no DNS server is needed), relay (relay.test), client.
#
#   nix build .#checks.x86_64-linux.tls -L
{ self, nixpkgs }:
{ lib, pkgs, ... }:
let
  domain = "relay.test";
  # pebble issues from a root it makes at start; the client fetches it to this file.
  caFile = "/tmp/pebble-ca.pem";

  # The lab's client: `mailcheck --cafile CA tls HOST PORT PROTO ...` prints the outcome as
  # JSON and exits 0 when TLS was established with a certificate valid for the host.
  inherit (import ./tools.nix { inherit lib pkgs; }) mailcheck;
in
{
  name = "chatmail-tls";
  meta.timeout = 900;

  nodes = {
    acme = {
      imports = [ "${nixpkgs}/nixos/tests/common/acme/server" ];
    };

    relay = {
      imports = [
        self.nixosModules.default
        # security.acme.defaults.server = pebble, and trust in pebble's web front end.
        "${nixpkgs}/nixos/tests/common/acme/client"
      ];
      # fqdn relay.test: every node's /etc/hosts gets it from the test framework.
      networking.domain = "test";
      virtualisation.memorySize = 1024;
      services.chatmail = {
        enable = true;
        inherit domain;
        tls = {
          mode = "acme";
          acme = {
            acceptTerms = true;
            email = "postmaster@${domain}";
          };
        };
        # THE TEST NETWORK HAS NO INTERNET: NO ROOT SERVERS, NO TRUST ANCHOR TO FETCH.
        unbound.enable = false;
      };
    };

    client =
      { nodes, ... }:
      {
        # Trust in pebble's web front end, to fetch the issuing root from its management API.
        security.pki.certificateFiles = [ nodes.acme.test-support.acme.caCert ];
        environment.systemPackages = [
          mailcheck
          pkgs.curl
        ];
      };
  };

  testScript =
    { nodes, ... }:
    ''
      import json

      DOMAIN = "${domain}"
      CA = "${caFile}"
      CA_DOMAIN = "${nodes.acme.test-support.acme.caDomain}"
      RELAY_IP = "${nodes.relay.networking.primaryIPAddress}"


      TLS = f"mailcheck --cafile {CA} tls {DOMAIN}"


      def probe(port: int, proto: str, *flags: str) -> dict:
          _, out = client.execute(f"{TLS} {port} {proto} " + " ".join(flags))
          return json.loads(out)


      def refused(port: int, proto: str, *flags: str) -> None:
          r = probe(port, proto, *flags)
          assert not r["ok"], r
          # The relay's alert, not a certificate or network problem on this side.
          assert r.get("kind") == "tls" and r.get("reason") == "TLSV1_ALERT_PROTOCOL_VERSION", r


      acme.start()
      acme.wait_for_unit("pebble.service")
      acme.wait_for_open_port(443)

      relay.start()
      client.start()
      for unit in ("dovecot", "postfix", "nginx"):
          relay.wait_for_unit(f"{unit}.service")
      for port in (25, 80, 143, 443, 465, 587, 993):
          relay.wait_for_open_port(port)
      client.wait_for_unit("multi-user.target")

      with subtest("the certificate is ordered from the ACME server"):
          # A oneshot: `systemctl start` returns when lego is done and fails if it failed.
          relay.succeed(f"systemctl start acme-order-renew-{DOMAIN}.service")
          relay.succeed(f"systemctl show -p Result --value acme-order-renew-{DOMAIN}.service | grep -qx success")
          client.wait_until_succeeds(f"curl -sf https://{CA_DOMAIN}:15000/roots/0 -o {CA}")
          # The renewal reloads Postfix, Dovecot and nginx without waiting: until then they
          # still present the placeholder certificate, which does not verify.
          client.wait_until_succeeds(f"{TLS} 993 imap")
          client.wait_until_succeeds(f"{TLS} 465 smtp")
          client.wait_until_succeeds(f"curl -sf --cacert {CA} -o /dev/null https://{DOMAIN}/robots.txt")

      with subtest("993 and 465 offer TLS 1.3 and refuse TLS 1.2"):
          for port, proto in ((993, "imap"), (465, "smtp")):
              r = probe(port, proto)
              assert r["ok"] and r["version"] == "TLSv1.3", r
              refused(port, proto, "--max", "1.2")
          assert probe(993, "imap")["banner"].startswith("* OK"), "no IMAP greeting on 993"
          assert probe(465, "smtp")["ehlo"] == [250, DOMAIN], "no EHLO answer on 465"

      with subtest("143 and 587 offer STARTTLS, then TLS 1.3 only"):
          for port, proto in ((143, "imap"), (587, "smtp")):
              r = probe(port, proto, "--starttls")
              assert r["ok"] and r["starttls_offered"] and r["version"] == "TLSv1.3", r
              refused(port, proto, "--starttls", "--max", "1.2")

      with subtest("25 offers STARTTLS with TLS 1.2 or newer"):
          r = probe(25, "smtp", "--starttls")
          assert r["ok"] and r["starttls_offered"] and r["version"] == "TLSv1.3", r
          r = probe(25, "smtp", "--starttls", "--max", "1.2")
          assert r["ok"] and r["version"] == "TLSv1.2", r
          refused(25, "smtp", "--starttls", "--legacy", "--min", "1.1", "--max", "1.1")

      with subtest("443 with ALPN imap reaches Dovecot, with ALPN smtp reaches Postfix"):
          r = probe(443, "imap", "--alpn", "imap")
          assert r["ok"] and r["banner"].startswith("* OK"), r
          r = probe(443, "smtp", "--alpn", "smtp")
          assert r["ok"] and r["ehlo"] == [250, DOMAIN], r

      with subtest("https://<domain>/new answers JSON with new credentials"):
          new = json.loads(client.succeed(f"curl -sf --cacert {CA} -X POST https://{DOMAIN}/new"))
          assert new["email"].endswith("@" + DOMAIN) and new["password"], new
          # A browser's GET is handed to the app.
          client.succeed(f"curl -s --cacert {CA} -D - -o /dev/null https://{DOMAIN}/new | grep -qi '^location: dcaccount:'")

      with subtest("mta-sts.<domain> serves the policy under the same certificate"):
          policy = client.succeed(
              f"curl -sf --cacert {CA} --resolve mta-sts.{DOMAIN}:443:{RELAY_IP}"
              f" https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt"
          )
          assert f"mx: {DOMAIN}" in policy, policy

      with subtest("port 80 redirects to HTTPS"):
          out = client.succeed(f"curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{DOMAIN}/new")
          assert out == f"301 https://{DOMAIN}/new", out
    '';
}

# One relay on its own: a first login creates an account, a wrong password is refused,
# cleartext is refused with 523, IMAP METADATA round-trips through chatmail-metadata, a
# delivery pushes the device token to a fake push proxy on the client node, a burst of
# mail hits the send rate limit, the expiry timer is armed, the node exporter serves the
# relay's metrics on loopback, the kill switch stops new accounts, 443 is split by ALPN, and
# the web site carries the operator's own files.
# Self-signed TLS: the relay's domain starts with "_" as such relays must.
#
#   nix build .#checks.x86_64-linux.features -L
{ self }:
{ lib, pkgs, ... }:
let
  domain = "_relay.test";
  alice = "alice0001@${domain}";
  bob = "bob000001@${domain}";
  # Sends the burst for the rate limit; nobody else sends from it.
  rater = "rater0001@${domain}";
  password = "correct-horse-battery";
  pushPort = 9999;
  pushLog = "/var/lib/pushproxy/log";

  # The lab's client and push-proxy stand-in (one JSON line per POST: path and token).
  inherit (import ./tools.nix { inherit lib pkgs; }) mailcheck pushproxy;
in
{
  name = "chatmail-features";
  meta.timeout = 900;

  nodes.client = {
    networking.firewall.allowedTCPPorts = [ pushPort ];
    systemd.services.pushproxy = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = "${lib.getExe pushproxy} --port ${toString pushPort} --log ${pushLog}";
        StateDirectory = "pushproxy";
      };
    };
  };

  nodes.relay =
    { nodes, ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 1024;
      environment.systemPackages = [
        mailcheck
        pkgs.openssl
        pkgs.curl
      ];
      services.chatmail = {
        enable = true;
        inherit domain;
        tls.mode = "self-signed";
        # THE TEST NETWORK HAS NO INTERNET: NO ROOT SERVERS, NO TRUST ANCHOR TO FETCH.
        unbound.enable = false;
        # Plain HTTP to the fake proxy: the test network has no notification service.
        settings.notification_url = "http://${nodes.client.networking.primaryIPAddress}:${toString pushPort}/notify";
        metrics.enable = true;
        # The operator's own style sheet over the relay's pages, and a file of their own.
        www.source = pkgs.runCommand "operator-www" { } ''
          mkdir $out
          echo 'body { background: #fbf3e1; }' > $out/style.css
          echo 'Harbour Chat' > $out/about.txt
        '';
      };
      specialisation.nocreate.configuration.services.chatmail.newAccounts = false;
    };

  testScript = ''
    import json

    client.wait_for_unit("pushproxy.service")
    client.wait_for_open_port(${toString pushPort})
    relay.wait_for_unit("multi-user.target")
    for unit in ("doveauth", "filtermail", "filtermail-incoming", "chatmail-metadata",
                 "chatmail-lastlogin", "chatmail-newemail", "opendkim", "dovecot", "postfix", "nginx"):
        relay.wait_for_unit(f"{unit}.service")
    for port in (25, 80, 143, 443, 465, 587, 993):
        relay.wait_for_open_port(port)


    # The relay's certificate is self-signed and its domain does not resolve: mailcheck runs
    # on the relay and talks to 127.0.0.1 without checking the certificate.
    def check(*args: str) -> dict:
        return json.loads(relay.succeed("mailcheck --insecure --connect 127.0.0.1 " + " ".join(args)))


    with subtest("a first login creates an account"):
        assert check("login", "${alice}", "${password}")["ok"]
        relay.succeed("test -f '/home/vmail/mail/${domain}/${alice}/password'")

    with subtest("a wrong password is refused"):
        assert not check("login", "${alice}", "not-the-password")["ok"]

    with subtest("metadata: a device token set on INBOX reads back"):
        token = ["--mailbox", "INBOX", "--key", "/private/devicetoken"]
        assert check("metadata", "${alice}", "${password}", *token, "--value", "tok123")["ok"]
        got = check("metadata", "${alice}", "${password}", *token)
        assert got["value"] == "tok123", got

    with subtest("push: a delivery POSTs the device token to the push proxy"):
        token = ["--mailbox", "INBOX", "--key", "/private/devicetoken", "--value", "tok"]
        assert check("metadata", "${alice}", "${password}", *token)["ok"]
        assert check("login", "${bob}", "${password}")["ok"]
        sent = check("send", "${bob}", "${password}", "--to", "${alice}", "--eml", "${./pgp-mime.eml}")
        assert sent["ok"], sent
        client.wait_until_succeeds("grep -F '\"token\": \"tok\"' ${pushLog}")
        client.succeed("grep -F '\"path\": \"/notify\"' ${pushLog}")

    with subtest("rate limit: a burst of 10 passes, then 450 Too much mail from"):
        assert check("login", "${rater}", "${password}")["ok"]
        burst = check("send", "${rater}", "${password}", "--to", "${bob}", "--eml", "${./pgp-mime.eml}", "--count", "13")
        codes = [r["code"] for r in burst["all"]]
        assert codes[:10] == [250] * 10, burst
        # The limiter refills one message per second (60 a minute); the burst is sent well
        # within that, so the next message is refused.
        assert codes[10] == 450 and "Too much mail from" in burst["all"][10]["text"], burst

    with subtest("cleartext is refused with 523"):
        refused = check("send", "${alice}", "${password}", "--to", "bob000001@example.org", "--cleartext")
        assert refused["code"] == 523, refused

    with subtest("port 443: ALPN imap reaches Dovecot, no ALPN reaches the HTTPS site"):
        relay.succeed("echo a1 LOGOUT | openssl s_client -connect 127.0.0.1:443 -alpn imap -quiet 2>/dev/null | grep -q '^\\* OK'")
        relay.succeed("curl -skf https://127.0.0.1/.well-known/autoconfig/mail/config-v1.1.xml | grep -q '<hostname>${domain}</hostname>'")

    with subtest("web pages: index with the invite, info, privacy, QR code, the operator's files"):
        relay.succeed("curl -skf https://127.0.0.1/ | grep -qF 'DCACCOUNT:https://${domain}/new'")
        relay.succeed("curl -skf https://127.0.0.1/info.html | grep -qF 'must be end-to-end encrypted'")
        relay.succeed("curl -skf https://127.0.0.1/privacy.html | grep -qF 'has not filled this in'")
        relay.succeed("curl -skf https://127.0.0.1/qr-invite.svg | grep -qF '<svg'")
        relay.succeed("curl -skf https://127.0.0.1/style.css | grep -qF 'background: #fbf3e1'")
        relay.succeed("curl -skf https://127.0.0.1/about.txt | grep -qF 'Harbour Chat'")
        relay.fail("test -s /var/log/nginx/access.log")

    with subtest("the expiry and report timers are armed"):
        relay.succeed("systemctl is-active chatmail-expire.timer chatmail-fsreport.timer")
        relay.succeed("systemctl start chatmail-expire.service")

    with subtest("metrics: the node exporter serves the relay's counters on loopback"):
        relay.wait_for_unit("prometheus-node-exporter.service")
        relay.succeed("systemctl is-active chatmail-metrics.timer")
        relay.succeed("systemctl start chatmail-metrics.service")
        scraped = relay.succeed("curl -sf http://127.0.0.1:9100/metrics")
        assert "node_textfile_scrape_error 0" in scraped, scraped
        # alice, bob and rater; one cleartext message refused.
        assert "chatmail_accounts_created_total 3" in scraped, scraped
        assert 'chatmail_refusals_total{code="523",direction="outgoing"} 1' in scraped, scraped

    with subtest("the kill switch stops new accounts"):
        relay.succeed("/run/current-system/specialisation/nocreate/bin/switch-to-configuration test")
        relay.succeed("test -e /etc/chatmail-nocreate")
        assert not check("login", "newuser01@${domain}", "${password}")["ok"]
  '';
}

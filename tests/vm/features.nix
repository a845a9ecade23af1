# One relay on its own: a first login creates an account, a wrong password is refused,
# cleartext is refused with 523, IMAP METADATA round-trips through chatmail-metadata, a
# delivery pushes the device token to a fake push proxy on the client node, a burst of
# mail hits the send rate limit, the expiry timer is armed, the kill switch stops new
# accounts, and 443 is split by ALPN.
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

  # A stand-in for the notification proxy: one JSON line per POST (path and body, which is
  # the device token) appended to the file given as its argument.
  fake-push-proxy = pkgs.writers.writePython3Bin "fake-push-proxy" { } ''
    import json
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace")
            with open(sys.argv[1], "a", encoding="utf-8") as log:
                log.write(json.dumps({"path": self.path, "token": body}) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()


    ThreadingHTTPServer(("0.0.0.0", ${toString pushPort}), Handler).serve_forever()
  '';
in
{
  name = "chatmail-features";
  meta.timeout = 900;

  nodes.client = {
    networking.firewall.allowedTCPPorts = [ pushPort ];
    systemd.services.fake-push-proxy = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = "${fake-push-proxy}/bin/fake-push-proxy /var/lib/fake-push-proxy/log";
        StateDirectory = "fake-push-proxy";
      };
    };
  };

  nodes.relay =
    { nodes, ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 1024;
      environment.systemPackages = [
        pkgs.python3
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
      };
      specialisation.nocreate.configuration.services.chatmail.newAccounts = false;
    };

  testScript = ''
    import json

    client.wait_for_unit("fake-push-proxy.service")
    client.wait_for_open_port(${toString pushPort})
    relay.wait_for_unit("multi-user.target")
    for unit in ("doveauth", "filtermail", "filtermail-incoming", "chatmail-metadata",
                 "chatmail-lastlogin", "chatmail-newemail", "opendkim", "dovecot", "postfix", "nginx"):
        relay.wait_for_unit(f"{unit}.service")
    for port in (25, 80, 143, 443, 465, 587, 993):
        relay.wait_for_open_port(port)

    def imap(script: str) -> str:
        return relay.succeed(
            "python3 - <<'PY'\n"
            "import imaplib, ssl\n"
            "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
            "m = imaplib.IMAP4_SSL('127.0.0.1', 993, ssl_context=ctx)\n"
            + script + "\nPY"
        )

    with subtest("a first login creates an account"):
        imap("m.login('${alice}', '${password}'); m.logout()")
        relay.succeed("test -f '/home/vmail/mail/${domain}/${alice}/password'")

    with subtest("a wrong password is refused"):
        relay.fail("python3 - <<'PY'\n"
                   "import imaplib, ssl\n"
                   "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
                   "imaplib.IMAP4_SSL('127.0.0.1', 993, ssl_context=ctx).login('${alice}', 'not-the-password')\nPY")

    with subtest("metadata: a device token set on INBOX reads back"):
        out = imap("m.login('${alice}', '${password}')\n"
                   "print(m.xatom('SETMETADATA', 'INBOX', '(/private/devicetoken \"tok123\")'))\n"
                   "print(m.xatom('GETMETADATA', 'INBOX', '/private/devicetoken'))\n"
                   "print(m.untagged_responses.get('METADATA'))")
        assert "tok123" in out, out

    # Submits the PGP/MIME fixture `count` times over one SMTP connection, From and To
    # rewritten; prints one [code, reply] per message (250 for accepted).
    def send_encrypted(sender: str, to: str, count: int = 1) -> list:
        return json.loads(relay.succeed(
            "python3 - <<'PY'\n"
            "import json, smtplib, ssl\n"
            "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
            "eml = open('${./pgp-mime.eml}').read()\n"
            f"eml = eml.replace('From: alice0001@relay1.test', 'From: {sender}')"
            f".replace('To: bob000001@relay2.test', 'To: {to}')\n"
            "s = smtplib.SMTP_SSL('127.0.0.1', 465, context=ctx)\n"
            f"s.login('{sender}', '${password}')\n"
            "results = []\n"
            f"for _ in range({count}):\n"
            "    try:\n"
            f"        s.sendmail('{sender}', ['{to}'], eml)\n"
            "        results.append([250, 'ok'])\n"
            "    except smtplib.SMTPRecipientsRefused as e:\n"
            "        code, reply = next(iter(e.recipients.values()))\n"
            "        results.append([code, reply.decode(errors='replace')])\n"
            "    except smtplib.SMTPResponseException as e:\n"
            "        results.append([e.smtp_code, e.smtp_error.decode(errors='replace')])\n"
            "    except smtplib.SMTPServerDisconnected as e:\n"
            "        results.append([0, str(e)])\n"
            "        break\n"
            "print(json.dumps(results))\nPY"
        ))

    with subtest("push: a delivery POSTs the device token to the push proxy"):
        out = imap("imaplib.Commands['SETMETADATA'] = ('AUTH', 'SELECTED')\n"
                   "m.login('${alice}', '${password}')\n"
                   "typ, data = m._simple_command('SETMETADATA', 'INBOX', '(/private/devicetoken \"tok\")')\n"
                   "print(typ, data)")
        assert out.startswith("OK"), out
        imap("m.login('${bob}', '${password}'); m.logout()")
        sent = send_encrypted("${bob}", "${alice}")
        assert sent == [[250, "ok"]], sent
        client.wait_until_succeeds("grep -F '\"token\": \"tok\"' /var/lib/fake-push-proxy/log")
        client.succeed("grep -F '\"path\": \"/notify\"' /var/lib/fake-push-proxy/log")

    with subtest("rate limit: a burst of 10 passes, then 450 Too much mail from"):
        imap("m.login('${rater}', '${password}'); m.logout()")
        results = send_encrypted("${rater}", "${bob}", 13)
        codes = [code for code, _ in results]
        assert codes[:10] == [250] * 10, results
        # The limiter refills one message per second (60 a minute); the burst is sent well
        # within that, so the next message is refused.
        refused = [r for r in results if r[0] != 250]
        assert refused, results
        assert refused[0][0] == 450 and "Too much mail from" in refused[0][1], results
        assert results[10][0] == 450, results

    with subtest("cleartext is refused with 523"):
        out = relay.succeed("python3 - <<'PY'\n"
                            "import smtplib, ssl\n"
                            "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
                            "s = smtplib.SMTP_SSL('127.0.0.1', 465, context=ctx)\n"
                            "s.login('${alice}', '${password}')\n"
                            "try:\n"
                            "    s.sendmail('${alice}', ['bob000001@example.org'], 'Subject: hi\\r\\n\\r\\nplain text\\r\\n')\n"
                            "except smtplib.SMTPDataError as e:\n"
                            "    print('code', e.smtp_code)\nPY")
        assert "code 523" in out, out

    with subtest("port 443: ALPN imap reaches Dovecot, no ALPN reaches the HTTPS site"):
        relay.succeed("echo a1 LOGOUT | openssl s_client -connect 127.0.0.1:443 -alpn imap -quiet 2>/dev/null | grep -q '^\\* OK'")
        relay.succeed("curl -skf https://127.0.0.1/.well-known/autoconfig/mail/config-v1.1.xml | grep -q '<hostname>${domain}</hostname>'")

    with subtest("web pages: index with the invite, info, privacy, QR code"):
        relay.succeed("curl -skf https://127.0.0.1/ | grep -qF 'DCACCOUNT:https://${domain}/new'")
        relay.succeed("curl -skf https://127.0.0.1/info.html | grep -qF 'only end-to-end encrypted'")
        relay.succeed("curl -skf https://127.0.0.1/privacy.html | grep -qF 'has not filled this in'")
        relay.succeed("curl -skf https://127.0.0.1/qr-invite.svg | grep -qF '<svg'")

    with subtest("the expiry and report timers are armed"):
        relay.succeed("systemctl is-active chatmail-expire.timer chatmail-fsreport.timer")
        relay.succeed("systemctl start chatmail-expire.service")

    with subtest("the kill switch stops new accounts"):
        relay.succeed("/run/current-system/specialisation/nocreate/bin/switch-to-configuration test")
        relay.succeed("test -e /etc/chatmail-nocreate")
        relay.fail("python3 - <<'PY'\n"
                   "import imaplib, ssl\n"
                   "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
                   "imaplib.IMAP4_SSL('127.0.0.1', 993, ssl_context=ctx).login('newuser01@${domain}', '${password}')\nPY")
  '';
}

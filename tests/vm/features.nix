# One relay on its own: a first login creates an account, a wrong password is refused,
# cleartext is refused with 523, IMAP METADATA round-trips through chatmail-metadata, the
# expiry timer is armed, the kill switch stops new accounts, and 443 is split by ALPN.
# Self-signed TLS: the relay's domain starts with "_" as such relays must.
#
#   nix build .#checks.x86_64-linux.features -L
{ self }:
{ lib, pkgs, ... }:
let
  domain = "_relay.test";
  alice = "alice0001@${domain}";
  password = "correct-horse-battery";
in
{
  name = "chatmail-features";
  meta.timeout = 900;

  nodes.relay = {
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
    };
    specialisation.nocreate.configuration.services.chatmail.newAccounts = false;
  };

  testScript = ''
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

"""A relay without a domain: mail_domain is its IPv4 address (10.77.0.13), its addresses are
user@[10.77.0.13], its certificate is self-signed and it signs nothing. Clients get their
account from /new with a dclogin URL that tells them to accept the certificate; mail flows
both ways between it and a domain relay (which accepts its unsigned mail because it comes
from that very address)."""

from __future__ import annotations

import json
import sys
import urllib.parse

from conftest import labmod

IP = labmod.IP_RELAY.ip
LITERAL = f"[{IP}]"


def new_account(client) -> dict:
    """GET /new, as the self-signed relay's web page does: JSON with the credentials."""
    for _ in range(10):
        r = client("--insecure", "http", "GET", f"https://{IP}/new")
        assert r["status"] == 200 and r["content_type"].startswith("application/json"), r
        answer = json.loads(r["body"])
        if not answer["password"].startswith("-"):  # mailcheck takes it as a positional argument
            return answer
    raise AssertionError("ten passwords in a row started with '-'")


def on_ip_relay(client, *args: str) -> dict:
    """mailcheck against the IP relay: reached at its address, its certificate accepted."""
    return client("--insecure", "--connect", IP, *args)


def test_the_ip_relay_runs_postfix_as_its_own_reverse_name_with_the_literal_as_destination(lab):
    relay = labmod.IP_RELAY
    conf = {k: labmod.host_run(relay, ["postconf", "-h", k], capture=True).stdout.strip()
            for k in ("myhostname", "mydestination", "myorigin")}
    assert conf == {"myhostname": "13.0.77.10.in-addr.arpa", "mydestination": LITERAL, "myorigin": LITERAL}
    assert labmod.host_run(relay, ["systemctl", "is-system-running"], check=False, capture=True).stdout.strip() == "running"
    assert labmod.host_run(relay, ["systemctl", "is-enabled", "opendkim.service"], check=False,
                           capture=True).stdout.strip() == "masked"


def test_new_gives_an_ip_literal_address_and_a_dclogin_url_that_accepts_the_certificate(client):
    answer = new_account(client)
    assert answer["email"].endswith("@" + LITERAL), answer
    url = urllib.parse.urlsplit(answer["dclogin_url"])
    assert url.scheme == "dclogin"
    assert urllib.parse.unquote(url.path) == answer["email"]
    query = urllib.parse.parse_qs(url.query)
    assert query["ic"] == ["3"] and query["ih"] == [IP] and query["sh"] == [IP], query
    assert query["p"] == [answer["password"]]
    # The account exists once the client logs in with these credentials.
    login = on_ip_relay(client, "login", answer["email"], answer["password"])
    assert login["ok"], login
    assert "XCHATMAIL" in login["capabilities"]
    print(f"/new on {IP}: {answer['email']}, {answer['dclogin_url'].split('?')[0]}?...&ic=3")


CERT_PROBE = """
import json, socket, ssl, sys
host, cafile = sys.argv[1], sys.argv[2]
pem = ssl.get_server_certificate((host, 993))
try:
    with socket.create_connection((host, 993), 10) as raw:
        ssl.create_default_context(cafile=cafile).wrap_socket(raw, server_hostname=host).close()
    error = None
except ssl.SSLCertVerificationError as e:
    error = e.verify_message
print(json.dumps({"pem": pem, "verify_error": error}))
"""


def test_the_ip_relay_certificate_is_self_signed_for_its_address(lab):
    from cryptography import x509

    out = labmod.host_run(labmod.CLIENT, [sys.executable, "-c", CERT_PROBE, IP, str(labmod.STATE / "ca/ca.pem")],
                          capture=True).stdout
    probe = json.loads(out)
    cert = x509.load_pem_x509_certificate(probe["pem"].encode())
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [IP]
    assert probe["verify_error"] == "self-signed certificate", probe["verify_error"]
    print(f"{IP}:993 presents {cert.subject.rfc4514_string()}, self-signed, IP:{IP}")


def test_mail_goes_from_the_ip_relay_to_a_domain_relay_and_back(client, account):
    ip_user = new_account(client)
    addr, pw = ip_user["email"], ip_user["password"]
    assert on_ip_relay(client, "login", addr, pw)["ok"]
    bob, bob_pw = account("relay1.test")

    sent = on_ip_relay(client, "send", addr, pw, "--to", bob)
    assert sent["ok"], sent
    got = client("wait", bob, bob_pw, "--token", sent["token"], timeout=90)
    assert got["ok"], got
    assert f"From: {addr}" in got["message"]

    reply = client("send", bob, bob_pw, "--to", addr)
    assert reply["ok"], reply
    got = on_ip_relay(client, "wait", addr, pw, "--token", reply["token"])
    assert got["ok"], got
    print(f"{addr} -> {bob} and back: delivered")


def test_chatmail_status_passes_on_the_ip_relay_and_dns_says_it_has_no_zone(lab):
    relay = labmod.IP_RELAY
    status = labmod.host_run(relay, ["chatmail", "status"], check=False, capture=True)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {cols[1]: cols for cols in map(str.split, status.stdout.splitlines()) if len(cols) >= 3}
    for unit in ("postfix.service", "dovecot.service", "doveauth.service", "filtermail-incoming.service",
                 "nginx.service"):
        assert rows[unit][0] == "ok" and rows[unit][2] == "active", (unit, status.stdout)
    dns = labmod.host_run(relay, ["chatmail", "dns"], check=False, capture=True)
    assert dns.returncode == 2 and "IP-literal relay" in dns.stderr and dns.stdout == "", dns
    print(status.stdout)

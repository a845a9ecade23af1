"""The lab's keys and certificates: a lab CA (placeholder certificates, pebble's own TLS,
classic.test's certificate), one DKIM key per relay (published by the lab's DNS), and
pebble, the ACME server the relays' acme-<domain> units get their real certificates from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hosts import CLASSIC, CLIENT, DNS, RELAYS, STATE, host_spawn, merged, run, wait_port, write

ACME_HOST = "acme.test"
ACME_DIRECTORY = f"https://{ACME_HOST}:14000/dir"


def ca_dir() -> Path:
    return STATE / "ca"


def make_ca() -> Path:
    ca = ca_dir()
    ca.mkdir(parents=True, exist_ok=True)
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.pem"), "-days", "30",
         "-subj", "/CN=chatmail lab CA"], capture=True)
    for name in [*(r.domain for r in RELAYS), CLASSIC.domain, ACME_HOST]:
        key, csr, crt = (ca / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"], capture=True)
        ext = ca / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.pem"), "-CAkey", str(ca / "ca.key"),
             "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(crt)], capture=True)
    return ca


def make_dkim_keys(ca: Path) -> None:
    """One DKIM key per relay (beside the CA); the relay's `chatmail dns` publishes its record."""
    for relay in RELAYS:
        if relay.domain:
            run(["openssl", "genrsa", "-out", str(ca / f"{relay.domain}.dkim.key"), "2048"], capture=True)


def start_acme_server(ca: Path) -> None:
    """pebble, the ACME test server, on the DNS host: the relays get real ACME certificates."""
    root = merged(DNS)
    write(root, "/etc/pebble/cert.pem", (ca / f"{ACME_HOST}.pem").read_text())
    write(root, "/etc/pebble/key.pem", (ca / f"{ACME_HOST}.key").read_text(), 0o600)
    write(root, "/etc/pebble/lab.json", json.dumps({"pebble": {
        "listenAddress": f"{DNS.ip}:14000", "managementListenAddress": f"{DNS.ip}:15000",
        "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}))
    host_spawn(DNS, ["pebble", "-config", "/etc/pebble/lab.json", "-dnsserver", f"{DNS.ip}:53"],
               "/var/log/pebble.log", env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
    wait_port(DNS, DNS.ip, 14000)


def acme_root(ca: Path) -> str:
    """The root of pebble's certificates (new each run): the relays, which verify each other,
    and the lab's clients (through the CA file they are given) trust it."""
    script = ("import ssl,sys,urllib.request; ctx=ssl.create_default_context(cafile=sys.argv[1]); "
              "sys.stdout.write(urllib.request.urlopen(sys.argv[2], context=ctx).read().decode())")
    root_pem = run(["ip", "netns", "exec", CLIENT.netns, sys.executable, "-c", script, str(ca / "ca.pem"),
                    f"https://{ACME_HOST}:15000/roots/0"], capture=True).stdout
    with (ca / "ca.pem").open("a") as f:
        f.write(root_pem)
    return root_pem

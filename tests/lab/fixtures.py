"""What the lab puts around its relays: the DNS server of the .test zone (A, MX and DKIM
records) and the stand-in for the push notification proxy, with the relay settings that
point at it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from hosts import CLIENT, DNS, RELAYS, STATE, host_spawn, merged, pids_of, wait_port, write
from pki import ACME_HOST

HERE = Path(__file__).resolve().parent
PUSH_PORT = 9999
PUSH_LOG = STATE / "push.jsonl"
# What the lab's relays use instead of the defaults: pushes go to the stand-in proxy.
# A small quota, so that tests can fill a mailbox past the quota warning quickly. The lab
# shares a small machine: its load says nothing about the relays, so it never stops sign-ups.
# A cleartext contact address for the passthrough tests.
LAB_SETTINGS = {"notification_url": f"http://{CLIENT.ip}:{PUSH_PORT}/notify", "max_mailbox_size": "4M",
                "appversions_file": "/etc/chatmail/appversions.json", "max_load_1m": "1000",
                "passthrough_recipients": "privacy@relay2.test"}
# An app-version index in the schema Delta Chat clients read (a sample, not real releases).
APPVERSIONS = {"clients": [{"clientId": "deltachat", "sources": [{
    "sourceId": "lab", "versionInteger": 1, "versionString": "1.0.0",
    "downloadUrl": "https://download.delta.chat/lab/example.apk"}]}]}


def txt(value: str) -> str:
    """A TXT record's data as quoted strings of at most 255 characters (RFC 1035)."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


def start_dns(dkim: dict[str, str]) -> None:
    root = merged(DNS)
    records = []
    for r in RELAYS:
        records += [f'local-data: "{name}. A {r.ip}"' for name in (r.domain, f"www.{r.domain}", f"mta-sts.{r.domain}")]
        records += [f'local-data: "{r.domain}. MX 10 {r.domain}."',
                    f"local-data: 'opendkim._domainkey.{r.domain}. TXT {txt(dkim[r.domain])}'"]
    records.append(f'local-data: "{ACME_HOST}. A {DNS.ip}"')
    conf = "\n".join([
        "server:",
        f"  interface: {DNS.ip}",
        "  access-control: 0.0.0.0/0 allow",
        '  chroot: ""',
        '  username: ""',
        "  do-daemonize: no",
        "  use-syslog: no",
        "  logfile: /var/log/unbound.log",
        '  local-zone: "test." static',
        *("  " + rec for rec in records),
    ]) + "\n"
    write(root, "/etc/unbound/lab.conf", conf)
    host_spawn(DNS, ["unbound", "-d", "-c", "/etc/unbound/lab.conf"], "/var/log/unbound.out")
    wait_port(DNS, DNS.ip, 53)


def start_push_proxy(status: int = 200) -> None:
    host_spawn(CLIENT, [sys.executable, str(HERE / "pushproxy.py"), "--port", str(PUSH_PORT),
                        "--log", str(PUSH_LOG), "--status", str(status)], str(STATE / "pushproxy.out"))
    wait_port(CLIENT, CLIENT.ip, PUSH_PORT)


def _push_proxies() -> list[int]:
    found = []
    for pid in pids_of(CLIENT):
        try:
            if b"pushproxy.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def stop_push_proxy() -> None:
    for pid in _push_proxies():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and _push_proxies():
        time.sleep(0.05)

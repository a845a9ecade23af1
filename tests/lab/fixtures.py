"""What the lab puts around its relays: the DNS server of the .test zone (each relay's
records exactly as `chatmail dns` prints them on that relay) and the stand-in for the push notification proxy, with the relay settings that
point at it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from hosts import CLIENT, DNS, STATE, LabError, host_run, host_spawn, merged, pids_of, wait_port, write
from pki import ACME_HOST

HERE = Path(__file__).resolve().parent
PUSH_PORT = 9999
PUSH_LOG = STATE / "push.jsonl"
# What the lab's relays use instead of the defaults: pushes go to the stand-in proxy.
# A small quota, so that tests can fill a mailbox past the quota warning quickly. The lab
# shares a small machine: its load says nothing about the relays, so it never stops sign-ups.
# A cleartext contact address for the passthrough tests.
LAB_SETTINGS = {"notification_url": f"http://{CLIENT.ip}:{PUSH_PORT}/notify", "max_mailbox_size": "4M",
                "appversions_file": "/etc/chatmail/appversions.json", "max_load_1m": 1000,
                "passthrough_recipients": "privacy@relay2.test"}
# The operator's own web files of services.chatmail.www.source, on relay2: its own index
# page and style sheet over the relay's pages, and a file of its own beside them.
WWW_SOURCE = {"relay2": HERE / "www-operator"}
# An app-version index in the schema Delta Chat clients read (a sample, not real releases).
APPVERSIONS = {"clients": [{"clientId": "deltachat", "sources": [{
    "sourceId": "lab", "versionInteger": 1, "versionString": "1.0.0",
    "downloadUrl": "https://download.delta.chat/lab/example.apk"}]}]}


ZONE = "test."
ZONE_FILE = "/etc/unbound/test.zone"
DNS_CONF = "/etc/unbound/lab.conf"
# The zone's own records: the name server, and pebble's name. Everything about a relay comes
# from `chatmail dns` run on that relay.
ZONE_HEAD = f"""$ORIGIN {ZONE}
$TTL 3600
@    IN SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 60
@    IN NS  ns.{ZONE}
ns   IN A   {DNS.ip}
{ACME_HOST}. IN A {DNS.ip}
"""


# The records of the lab's other mail hosts (classic.test), one file per domain, written when
# the host is set up.
EXTRA_ZONES = STATE / "zones"


def zone_text(relay_zones: dict[str, str]) -> str:
    """The lab's .test zone: its head, the other mail hosts' records, then each relay's
    `chatmail dns` output verbatim."""
    extra = sorted(EXTRA_ZONES.glob("*.zone")) if EXTRA_ZONES.is_dir() else []
    return (ZONE_HEAD + "".join(f"\n{p.read_text()}" for p in extra)
            + "".join(f"\n{relay_zones[name]}" for name in sorted(relay_zones)))


def start_dns() -> None:
    """unbound on the DNS host, authoritative for .test from ZONE_FILE (which
    :func:`publish_zone` rewrites), controlled through a local socket."""
    root = merged(DNS)
    write(root, ZONE_FILE, zone_text({}))
    conf = "\n".join([
        "server:",
        f"  interface: {DNS.ip}",
        "  access-control: 0.0.0.0/0 allow",
        '  chroot: ""',
        '  username: ""',
        "  do-daemonize: no",
        "  use-syslog: no",
        "  logfile: /var/log/unbound.log",
        # unbound answers .test (RFC 6761) itself unless told not to.
        f'  local-zone: "{ZONE}" nodefault',
        "remote-control:",
        "  control-enable: yes",
        "  control-interface: /run/unbound.ctl",
        "auth-zone:",
        f'  name: "{ZONE}"',
        f'  zonefile: "{ZONE_FILE}"',
        "  for-downstream: yes",
        "  for-upstream: yes",
    ]) + "\n"
    write(root, DNS_CONF, conf)
    host_spawn(DNS, ["unbound", "-d", "-c", DNS_CONF], "/var/log/unbound.out")
    wait_port(DNS, DNS.ip, 53)


def publish_zone(relay_zones: dict[str, str]) -> None:
    """Publish the relays' zones (relay domain -> `chatmail dns` output) and make unbound
    load them before returning."""
    write(merged(DNS), ZONE_FILE, zone_text(relay_zones))
    deadline = time.monotonic() + 30
    while True:
        r = host_run(DNS, ["unbound-control", "-c", DNS_CONF, "auth_zone_reload", ZONE], check=False, capture=True)
        if r.returncode == 0 and r.stdout.strip() == "ok":
            return
        if time.monotonic() > deadline:
            raise LabError(f"unbound did not load {ZONE_FILE}: {r.stdout}{r.stderr}")
        time.sleep(0.2)


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

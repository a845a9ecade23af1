"""Realtime channels (webxdc over iroh) between Delta Chat cores on two relays, through the
iroh relays the relays run.

Each relay runs iroh-relay (config/iroh-relay.nix, in the version the lab's cores speak)
behind its nginx and advertises it in IMAP METADATA. Alice's core (relay1) and Bob's
(relay2) take their home relay from there, exchange their iroh node ids in encrypted
advertisements that travel as mail through the relays, and then send data over iroh.

Where the data goes is read from the iroh relays' own counters (their Prometheus metrics on
the relay's loopback): `bytes_sent` counts the bytes of the packets an iroh relay forwarded
between devices. Both cores run on the lab's client host, so the only direct path between
them is UDP over that host's loopback interface; dropping it leaves the iroh relays as the
only way, and leaving it open lets the cores move off them once they have found it.

What is not tested, because the client cannot do it: two cores connecting with no iroh relay
at all. A core's advertisement carries its node id and home relay but no IP addresses (they
would be stored in the mailboxes), and without an advertised relay a core falls back to
iroh's public default relays, which the lab cannot reach; so the channel never comes up (the
last test shows that). Direct connections do happen, through hole punching after the cores
have met through a relay (the second test).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
RELAYS = ("relay1", "relay2")
COUNT = 20
SIZE = 1000
METRICS = "http://127.0.0.1:9092/metrics"
NOT_CONNECTED = 3


def iroh_counters(lab, relay: str) -> dict[str, float]:
    """The iroh relay's counters on a relay, from its metrics endpoint on loopback."""
    script = f"import urllib.request; print(urllib.request.urlopen({METRICS!r}, timeout=5).read().decode())"
    out = lab.host_run(lab.BY_NAME[relay], ["python3", "-c", script], capture=True).stdout
    counters = {}
    for line in out.splitlines():
        m = re.fullmatch(r"relayserver_(\w+?)(?:_total)? ([0-9.e+]+)", line.strip())
        if m:
            counters[m.group(1)] = float(m.group(2))
    return counters


def relayed(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> int:
    """Bytes the two iroh relays together forwarded between two readings."""
    return int(sum(after[r]["bytes_sent"] - before[r]["bytes_sent"] for r in before))


@contextmanager
def udp_between_cores_dropped(lab):
    """Drop every UDP packet on the client host's loopback interface (the cores' only direct
    path to each other); DNS and the cores' TCP connections to the relays go elsewhere.

    This kernel has no tc drop action (nor netem), so UDP is classified into an htb class
    whose queue holds nothing: every packet put there is dropped, and counted. Yields a
    function that returns that count."""
    tc = ["ip", "netns", "exec", lab.CLIENT.netns, "tc"]
    steps = [
        ["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1"],
        ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit"],
        ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate", "8bit"],
        ["qdisc", "add", "dev", "lo", "parent", "1:2", "handle", "2:", "pfifo", "limit", "0"],
        ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "protocol", "17", "0xff", "flowid", "1:2"],
        ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ipv6", "prio", "2", "u32",
         "match", "ip6", "protocol", "17", "0xff", "flowid", "1:2"],
    ]

    def dropped() -> int:
        out = subprocess.run([*tc, "-s", "qdisc", "show", "dev", "lo", "parent", "1:2"], check=True,
                             capture_output=True, text=True).stdout
        return int(re.search(r"dropped (\d+)", out).group(1))

    try:
        for step in steps:
            subprocess.run([*tc, *step], check=True, capture_output=True)
        yield dropped
    finally:
        subprocess.run([*tc, "qdisc", "del", "dev", "lo", "root"], check=False, capture_output=True)


def run_channel(lab, pause: float) -> tuple[dict, list[dict[str, dict[str, float]]]]:
    """realtime.py on the client host with two bursts; the iroh relays' counters before the
    scenario, between the bursts and after it."""
    readings = [{r: iroh_counters(lab, r) for r in RELAYS}]
    domains = [lab.BY_NAME[r].domain for r in RELAYS]
    cmd = lab.in_host(lab.CLIENT, [sys.executable, str(HERE / "realtime.py"), "--relays", *domains,
                                   "--count", str(COUNT), "--size", str(SIZE), "--pause", str(pause)])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, f"realtime.py ended early:\n{proc.stderr.read()}"
        assert json.loads(first) == {"paused": True}, first
        readings.append({r: iroh_counters(lab, r) for r in RELAYS})
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    readings.append({r: iroh_counters(lab, r) for r in RELAYS})
    print(err, file=sys.stderr)
    return json.loads(out.strip().splitlines()[-1]), readings


def assert_everything_arrived(result: dict) -> None:
    assert result["app_received"]["viewtype"] == "Webxdc", result["app_received"]
    assert result["app_received"]["encrypted"], "the app and the advertisements travel end-to-end encrypted"
    assert result["connected"]
    for burst in result["bursts"]:
        for direction in ("alice_to_bob", "bob_to_alice"):
            got = burst[direction]
            assert (got["sent"], got["received"], got["in_order"]) == (COUNT, COUNT, True), burst


def report(result: dict, first: int, second: int) -> None:
    print(json.dumps({"timings": result["timings"], "bursts": result["bursts"],
                      "relayed_bytes_first_burst": first, "relayed_bytes_second_burst": second}))


def test_each_relay_advertises_its_own_iroh_relay_in_metadata(lab, client, account):
    for relay in RELAYS:
        domain = lab.BY_NAME[relay].domain
        addr, password = account(domain)
        got = client("metadata", addr, password, "--key", "/shared/vendor/deltachat/irohrelay")
        assert got["ok"] and got["value"] == lab.relay_config(relay)["irohRelay"]["url"], got


def test_nginx_passes_the_iroh_relay_paths_to_it(lab, client):
    for relay in RELAYS:
        domain = lab.BY_NAME[relay].domain
        # iroh clients probe their relays' latency with these; iroh-relay answers them itself.
        got = client("http", "GET", f"http://{domain}/generate_204")
        assert got["status"] == 204, got
        got = client("http", "GET", f"http://{domain}/ping")
        assert got["status"] == 200, got
        # A plain GET of the relay path is not an upgrade: iroh-relay itself refuses it.
        got = client("http", "GET", f"http://{domain}/relay")
        assert got["status"] == 400, got


def test_realtime_data_goes_through_the_iroh_relays_when_the_cores_cannot_reach_each_other(lab):
    with udp_between_cores_dropped(lab) as dropped:
        result, (before, between, after) = run_channel(lab, pause=5)
        tried_direct = dropped()
    first, second = relayed(before, between), relayed(between, after)
    report(result, first, second)
    assert_everything_arrived(result)
    # Each core connected to its relay's iroh relay (its home relay, from METADATA) ...
    assert all(after[r]["accepts"] > before[r]["accepts"] for r in RELAYS), (before, after)
    # ... the cores did try their direct path, and it was dropped ...
    assert tried_direct > 0
    # ... so every payload of both directions (2 x COUNT x SIZE bytes in each burst) crossed
    # an iroh relay of ours, once in each burst.
    payload = 2 * COUNT * SIZE
    assert first >= payload and second >= payload, (first, second)


def test_realtime_data_leaves_the_iroh_relays_once_the_cores_find_a_direct_path(lab):
    result, (before, between, after) = run_channel(lab, pause=5)
    first, second = relayed(before, between), relayed(between, after)
    report(result, first, second)
    assert_everything_arrived(result)
    # The cores met through the iroh relays (the advertisements name nothing else) ...
    assert first > 0
    # ... then found the direct path: of the second burst not even one payload's worth of
    # bytes went through them.
    assert second < SIZE, second


def test_without_an_advertised_iroh_relay_the_cores_cannot_reach_each_other(lab):
    ini = "/etc/chatmail/chatmail.ini"
    originals = {}
    try:
        for relay in RELAYS:
            host = lab.BY_NAME[relay]
            path = lab.merged(host) / ini.lstrip("/")
            originals[relay] = path.read_text()
            path.write_text(re.sub(r"(?m)^iroh_relay = .*$", "iroh_relay = ", originals[relay]))
            lab.host_run(host, ["systemctl", "restart", "chatmail-metadata.service"])
        domains = [lab.BY_NAME[r].domain for r in RELAYS]
        cmd = lab.in_host(lab.CLIENT, [sys.executable, str(HERE / "realtime.py"), "--relays", *domains,
                                       "--count", "1", "--connect-timeout", "30"])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        for relay, text in originals.items():
            host = lab.BY_NAME[relay]
            (lab.merged(host) / ini.lstrip("/")).write_text(text)
            lab.host_run(host, ["systemctl", "restart", "chatmail-metadata.service"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result["timings"]))
    # Everything up to the advertisements works as before (they travel as mail) ...
    assert result["app_received"]["encrypted"] and "advertisements" in result["timings"], proc.stderr
    # ... but no data arrives: neither side can tell the other where it is.
    assert proc.returncode == NOT_CONNECTED and result["connected"] is False, proc.stderr

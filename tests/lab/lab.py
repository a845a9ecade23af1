#!/usr/bin/env python3
"""The chatmail lab: two federating relays, a third one without a domain (its IPv4 address
as mail domain, self-signed), an ordinary mail server of another domain (classic.test), a
DNS server and a client, on one machine.

Each host runs in its own network namespace, joined by a bridge in a switch namespace.
The relays boot Debian 13's systemd (systemd-nspawn) in an overlay of a cached Debian 13
root filesystem; their configuration and every chatmaild unit come from the NixOS module's
data evaluated with nix-instantiate, and chatmaild runs from this checkout's source. The DNS
server (unbound, and pebble for ACME) runs chrooted and publishes what `chatmail dns` prints
on each relay; the client host shares this machine's filesystem and runs Delta Chat cores.
classic.test boots the same tree with Debian's stock Postfix, Dovecot and OpenDKIM and no
chatmail rules (classic.py).

Needs root and these Debian packages: debootstrap nix-bin iproute2 openssl systemd-container.

  lab.py up        bring the lab up (safe to run again)
  lab.py status    hosts, addresses, and each relay's units
  lab.py exec HOST -- CMD...
                   run a command on a host (inside the relay's container for relays)
  lab.py demo      two Delta Chat users on the two relays: Secure-Join, then messages
  lab.py bench [ARGS...]
                   delivery latency: core to core, file to IDLE EXISTS (bench_delivery.py)
  lab.py down      stop everything and remove every namespace, mount and file

Modules: hosts (namespaces, overlays, containers), pki (CA, DKIM keys, ACME server),
relay (rendering a relay from the module's data, its units included), units (unit files),
fixtures (DNS, the push-proxy stand-in), render (config file formats), rootfs (the tree),
classic (the classic mail server).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import builds  # noqa: E402
import classic as classicmod  # noqa: E402
import dovecot_build  # noqa: E402
import iroh_build  # noqa: E402
import relay as relaymod  # noqa: E402
import rootfs  # noqa: E402
from fixtures import (  # noqa: E402,F401
    APPVERSIONS, LAB_SETTINGS, PUSH_LOG, PUSH_PORT, ZONE_FILE, publish_zone, start_dns, start_push_proxy,
    stop_push_proxy,
)
from hosts import (  # noqa: E402,F401
    BOOTED, BY_NAME, CLASSIC, CLIENT, CONTAINERS, DNS, HOSTS, IP_RELAY, PREFIX, RELAYS, STATE, SWITCH, Host,
    LabError, boot, contained_run, host_run, in_host, leader, log,
    make_network, merged, mount_host, netns_exists, nspawn_lock, pids_of, poweroff, remove_cgroups, run,
    wait_booted, cgroup_dirs,
)
from pki import acme_root, make_ca, make_dkim_keys, start_acme_server  # noqa: E402

FAILED_LOGS = Path("/var/log/chatmail-lab")
# What the lab's DNS publishes for a relay: the admin command's zone, as an operator would.
ZONE_COMMAND = ["chatmail", "dns"]
# The units `status` lists (besides systemd's own).
SHOWN = ("doveauth", "filtermail", "chatmail-", "postfix", "dovecot", "nginx", "opendkim", "unbound", "coturn",
         "acme-", "iroh-relay")


@functools.cache
def relay_config(name: str = "relay1") -> dict:
    """A relay's evaluated configuration (settings, paths, units), as the relay got it."""
    return relaymod.evaluate(BY_NAME[name])


def paths(name: str = "relay1") -> dict:
    """Where things are on a relay (tests/lab/relay.nix's `paths`)."""
    return relay_config(name)["paths"]


def is_up() -> bool:
    return (STATE / "up").exists() and all(netns_exists(h.netns) for h in HOSTS)


def up() -> None:
    if is_up():
        log("already up")
        status()
        return
    if STATE.exists() or any(netns_exists(h.netns) for h in HOSTS) or netns_exists(SWITCH):
        log("cleaning up what an earlier run left behind")
        down()
    for tool in ("debootstrap", "nix-instantiate", "ip", "openssl", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing: apt-get install debootstrap nix-bin iproute2 openssl "
                           "systemd-container util-linux")
    base = rootfs.ensure_rootfs(log)
    # Dovecot without the 500 ms IDLE delay, as the NixOS module builds it, and the iroh
    # relay in the version the lab's Delta Chat cores speak: each built once and cached,
    # side by side, so an empty cache waits for the longer build only.
    try:
        built = builds.run_side_by_side({
            "dovecot": builds.Build(lambda p: dovecot_build.ensure_patched_dovecot(p, base),
                                    dovecot_build.build_log(dovecot_build.debian_version(base))),
            "iroh-relay": builds.Build(lambda p: iroh_build.ensure_iroh_relay(p, base), iroh_build.build_log()),
        }, log)
    except builds.BuildFailed as e:
        raise LabError(str(e)) from e
    dovecot, iroh = built["dovecot"], built["iroh-relay"]
    STATE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        _bring_up(base, dovecot, iroh)
    except BaseException:
        _keep_logs()
        log(f"up failed: removing what it made; the hosts' logs are kept in {FAILED_LOGS}")
        down()
        raise
    (STATE / "up").write_text(str(time.time()))
    log(f"up in {time.monotonic() - started:.0f} s")
    status()


def _keep_logs() -> None:
    """Keep what tells why a start failed: the DNS host's files, each relay's journal."""
    for h in HOSTS:
        logs = STATE / h.name / "upper/var/log"
        if logs.is_dir():
            shutil.copytree(logs, FAILED_LOGS / h.name, dirs_exist_ok=True)
    for r in CONTAINERS:
        if leader(r) is None:
            continue
        out = host_run(r, ["journalctl", "-b", "--no-pager"], check=False, capture=True).stdout
        (FAILED_LOGS / r.name).mkdir(parents=True, exist_ok=True)
        (FAILED_LOGS / r.name / "journal.txt").write_text(out)


def _bring_up(base: Path, dovecot: Path, iroh: Path) -> None:
    log("network: namespaces and a bridge")
    make_network()
    Path("/etc/netns", CLIENT.netns).mkdir(parents=True, exist_ok=True)
    Path("/etc/netns", CLIENT.netns, "resolv.conf").write_text(f"nameserver {DNS.ip}\n")
    for h in HOSTS:
        if h.chrooted:
            mount_host(h, base)
    for relay in BOOTED:
        dovecot_build.install_into(merged(relay), dovecot)
        iroh_build.install_into(merged(relay), iroh)
    log("TLS: a lab CA and one certificate per relay")
    ca = make_ca()
    make_dkim_keys(ca)
    log("dns: unbound, authoritative for .test (each relay's records from `chatmail dns`)")
    start_dns()
    log("client: a stand-in for the push notification proxy")
    start_push_proxy()
    log("dns: pebble, an ACME server")
    start_acme_server(ca)
    root_pem = acme_root(ca)
    log("classic: stock Postfix, Dovecot and OpenDKIM for classic.test (its records into the zone)")
    classicmod.configure(ca, root_pem)
    configs = {}
    for relay in BOOTED:
        log(f"{relay.name}: rendering the NixOS module's configuration and units for {relay.domain}")
        configs[relay.name] = relaymod.configure(relay, ca, root_pem)
    # ACME needs the relays' names before they boot: `chatmail dns` in a one-shot container of
    # each tree (its DKIM key and addresses; no ACME account yet).
    publish_zone({r.domain: contained_run(r, relaymod.binds(configs[r.name]), ZONE_COMMAND).stdout
                  for r in RELAYS if r.domain})
    for relay in BOOTED:
        log(f"{relay.name}: booting systemd")
        boot(relay, relaymod.binds(configs[relay.name]))
    log("classic: booting systemd")
    boot(CLASSIC, {})
    for host in CONTAINERS:
        state = wait_booted(host, timeout=75)
        if state != "running":
            failed = host_run(host, ["systemctl", "--failed", "--no-legend", "--plain"], check=False,
                              capture=True).stdout
            raise LabError(f"{host.name}: systemd is {state!r}; failed units:\n{failed}")
        log(f"{host.name}: systemd is running, every unit started")
    log("dns: each relay's zone again from `chatmail dns`, now with its ACME account in CAA")
    publish_zone(relay_zones())


def relay_zones() -> dict[str, str]:
    """What `chatmail dns` prints on each booted relay (relay domain -> zone text)."""
    return {r.domain: host_run(r, ZONE_COMMAND, capture=True).stdout for r in RELAYS if r.domain}


def down() -> None:
    for r in CONTAINERS:
        poweroff(r)
    locks = [lock for r in CONTAINERS if (lock := nspawn_lock(r)) is not None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for h in HOSTS for p in pids_of(h)]
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while pids and time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
    if STATE.exists():
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(str(STATE) + "/")), key=len, reverse=True):
            run(["umount", m], check=False)
            if Path(m).is_mount():
                run(["umount", "-l", m], check=False)
    for lock in locks:
        lock.unlink(missing_ok=True)
    for r in CONTAINERS:
        remove_cgroups(r)
    for name in [h.netns for h in HOSTS] + [SWITCH]:
        if netns_exists(name):
            run(["ip", "netns", "del", name], check=False)
    shutil.rmtree(Path("/etc/netns", CLIENT.netns), ignore_errors=True)
    if STATE.exists():
        shutil.rmtree(STATE)
    log("down: no namespaces, mounts, container locks or processes left")


def leftovers(locks: list[Path]) -> list[str]:
    """What `down` must not leave: namespaces, mounts, container locks, container processes."""
    found = [f"namespace {n}" for n in [h.netns for h in HOSTS] + [SWITCH] if netns_exists(n)]
    found += [f"mount {line.split()[1]}" for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(STATE) + "/")]
    found += [f"lock {lock}" for lock in locks if lock.exists()]
    found += [f"cgroup {d}" for r in CONTAINERS for d in cgroup_dirs(r) if d.exists()]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--network-namespace-path=/run/netns/{PREFIX}".encode() in b" ".join(cmdline):
            found.append(f"process {proc.name}")
    return found


def unit_states(relay: Host) -> list[tuple[str, str, str]]:
    """(unit, active state, sub state) of the relay's services and timers."""
    r = host_run(relay, ["systemctl", "list-units", "--all", "--type=service,timer", "--no-legend", "--plain"],
                 check=False, capture=True)
    rows = []
    for line in r.stdout.splitlines():
        cols = line.split(None, 4)
        if len(cols) >= 4 and cols[0].startswith(SHOWN) and cols[1] == "loaded" and "@" not in cols[0]:
            rows.append((cols[0], cols[2], cols[3]))
    return rows


def status() -> None:
    if not is_up():
        print("the lab is down")
        return
    for h in HOSTS:
        what = f"{h.domain} " if h.domain else ""
        if h.booted:
            state = host_run(h, ["systemctl", "is-system-running"], check=False, capture=True).stdout.strip()
            print(f"{h.name:8} {h.ip:12} {what:13}systemd: {state}")
            for unit, active, sub in unit_states(h):
                print(f"           {unit:36} {active} ({sub})")
            continue
        procs = []
        for p in pids_of(h):
            try:
                procs.append(Path(f"/proc/{p}/comm").read_text().strip())
            except OSError:
                pass
        names = ", ".join(sorted(set(procs))) or "-"
        print(f"{h.name:8} {h.ip:12} {what:13}running: {names}")
    print("\nrelays: " + ", ".join(f"{r.domain} ({r.ip}: SMTP 25/465/587, IMAP 143/993)" for r in RELAYS)
          + f"; without a domain: {IP_RELAY.ip} (addresses user@[{IP_RELAY.ip}], self-signed)")
    print(classicmod.describe())
    print(f"dns: {DNS.ip}; relay logs: lab exec RELAY -- journalctl -u UNIT")


def exec_cmd(name: str, cmd: list[str]) -> int:
    if name not in BY_NAME:
        raise LabError(f"no host {name!r}; hosts: {', '.join(BY_NAME)}")
    if not is_up():
        raise LabError("the lab is down: run 'lab.py up' first")
    if not cmd:
        cmd = ["bash"] if BY_NAME[name].chrooted or BY_NAME[name].booted else [os.environ.get("SHELL", "sh")]
    if BY_NAME[name].booted and sys.stdin.isatty():
        cmd = ["env", f"TERM={os.environ.get('TERM', 'xterm')}", *cmd]
    return subprocess.call(in_host(BY_NAME[name], cmd))


def demo() -> int:
    if not is_up():
        up()
    venv = Path(os.environ.get("CHATMAIL_LAB_VENV", rootfs.CACHE_DIR / "venv"))
    python = venv / "bin/python"
    if not python.exists():
        raise LabError(f"no client environment at {venv}: run tools/install-deps (it creates it)")
    return subprocess.call(in_host(CLIENT, [str(python), str(HERE / "dcdemo.py"),
                                            "--relays", *[r.domain for r in RELAYS if r.domain]]))


def bench(args: list[str]) -> int:
    """bench_delivery.py on the lab (brought up first if it is down)."""
    if not is_up():
        up()
    import bench_delivery

    return bench_delivery.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="bring the lab up")
    sub.add_parser("status", help="show hosts and services")
    ex = sub.add_parser("exec", help="run a command on a host")
    ex.add_argument("host", choices=sorted(BY_NAME))
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("demo", help="Secure-Join and messages between two Delta Chat users")
    # Its options are bench_delivery.py's (lab.py bench --help lists them).
    sub.add_parser("bench", help="delivery latency: core to core, file to IDLE EXISTS", add_help=False)
    sub.add_parser("down", help="remove everything the lab made")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "bench" and {"-h", "--help"} & set(extra):
        import bench_delivery

        return bench_delivery.main(extra)
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces, mounts, containers)")
    try:
        if args.command == "up":
            up()
        elif args.command == "status":
            status()
        elif args.command == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return exec_cmd(args.host, cmd)
        elif args.command == "demo":
            return demo()
        elif args.command == "bench":
            return bench(extra)
        elif args.command == "down":
            down()
    except (LabError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        if isinstance(e, subprocess.CalledProcessError) and e.stderr:
            log(e.stderr.strip())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

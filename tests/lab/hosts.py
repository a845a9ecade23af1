"""The lab's hosts: network namespaces on one bridge, overlays of the Debian 13 tree, and
how a command runs on each host.

The relays and the classic mail server boot Debian's systemd in ``systemd-nspawn`` joined to
their namespace; a command runs there inside the container's namespaces (nsenter into its
PID 1), so it sees what the units see. The DNS host runs chrooted in its overlay; the client
host shares this machine's filesystem. Another lab can run beside this one with its own
CHATMAIL_LAB_PREFIX (namespace and container names) and CHATMAIL_LAB_STATE.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STATE = Path(os.environ.get("CHATMAIL_LAB_STATE", "/run/chatmail-lab"))
PREFIX = os.environ.get("CHATMAIL_LAB_PREFIX", "cmlab-")
SUBNET = "10.77.0"
SWITCH = PREFIX + "sw"
NSPAWN_LOCKS = Path("/run/systemd/nspawn/locks")
# The PATH of a shell on a Debian system: commands run in a relay see nothing of ours.
RELAY_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"]


class LabError(Exception):
    pass


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    domain: str | None = None  # mail hosts only
    chrooted: bool = True
    booted: bool = False  # boots systemd in a container

    @property
    def netns(self) -> str:
        return PREFIX + self.name

    @property
    def ip_literal(self) -> bool:
        """A relay without a domain: its mail_domain is its IPv4 address."""
        return self.domain == self.ip

    @property
    def hostname(self) -> str:
        return self.domain if self.domain and not self.ip_literal else self.name


DNS = Host("dns", f"{SUBNET}.2")
RELAYS = [Host("relay1", f"{SUBNET}.11", "relay1.test", booted=True),
          Host("relay2", f"{SUBNET}.12", "relay2.test", booted=True)]
# A relay without a domain: addresses user@[10.77.0.13], a self-signed certificate, no DKIM.
IP_RELAY = Host("relay3", f"{SUBNET}.13", f"{SUBNET}.13", booted=True)
BOOTED = [*RELAYS, IP_RELAY]
# An ordinary mail server of another domain (stock Postfix, Dovecot and OpenDKIM, no chatmail
# rules): what the relays federate with besides each other.
CLASSIC = Host("classic", f"{SUBNET}.20", "classic.test", booted=True)
# Every host that boots systemd in a container: the relays and the classic server.
CONTAINERS = [*BOOTED, CLASSIC]
CLIENT = Host("client", f"{SUBNET}.100", chrooted=False)
HOSTS = [DNS, *CONTAINERS, CLIENT]
BY_NAME = {h.name: h for h in HOSTS}


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=capture, **kw)


def merged(host: Host) -> Path:
    return STATE / host.name / "root"


def write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)
    return p


# ---------------------------------------------------------------- network


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def make_network() -> None:
    run(["ip", "netns", "add", SWITCH])
    run(["ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", SWITCH, "link", "set", "br0", "up"])
    for h in HOSTS:
        run(["ip", "netns", "add", h.netns])
        peer = f"v-{h.name}"
        run(["ip", "link", "add", peer, "netns", SWITCH, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
        run(["ip", "-n", SWITCH, "link", "set", peer, "master", "br0", "up"])
        run(["ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0"])
        run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", h.netns, "link", "set", "lo", "up"])


# ---------------------------------------------------------------- filesystems


def mount_host(host: Host, base: Path) -> None:
    """An overlay of the cached tree; a chrooted host also gets /proc, /dev and /run
    (a booted one gets them from systemd-nspawn)."""
    d = STATE / host.name
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    root = merged(host)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}", str(root)])
    if not host.booted:
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
        run(["mount", "--bind", "/dev", str(root / "dev")])
        run(["mount", "-t", "tmpfs", "tmpfs", str(root / "run")])
    (root / "etc/hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.hostname}\n" for h in HOSTS)
    )
    (root / "etc/resolv.conf").write_text(f"nameserver {DNS.ip}\n")


def chroot_run(host: Host, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command in a host's tree before it boots (no namespace, no /proc)."""
    return run(["chroot", str(merged(host)), *cmd], **kw)


# ---------------------------------------------------------------- containers


CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def cgroup_dirs(host: Host) -> list[Path]:
    """The host's own cgroup in each writable hierarchy of this machine (named after its
    namespace, so another lab's hosts have their own)."""
    roots = [r for r in CGROUP_ROOTS if (r / "cgroup.procs").exists()]
    # On a pure cgroup v2 machine /sys/fs/cgroup is the one hierarchy; on a hybrid one it is
    # a tmpfs holding the others.
    return [r / f"chatmail-lab-{host.netns}" for r in roots]


def enter_own_cgroup(host: Host) -> None:
    """Move the calling process into the host's own cgroups (a preexec function).

    Why: with --keep-unit, a container's systemd builds its tree (system.slice/<unit>...)
    inside the cgroup systemd-nspawn runs in. Were that one cgroup for every container, the
    relays (and other labs' relays), which run units of the same names, would share those
    directories, and one systemd removing a unit's emptied cgroup while another starts the
    unit makes the start fail ("Failed to spawn executor: No such file or directory")."""
    for d in cgroup_dirs(host):
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroups(host: Host) -> None:
    """Remove the host's cgroups (empty once its container has stopped), deepest first."""
    for d in cgroup_dirs(host):
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass


def boot(host: Host, binds: dict[str, str]) -> None:
    """Boot systemd in the host's overlay, in the host's network namespace (detached).

    --register=no and --keep-unit: this machine's PID 1 need not be systemd (no system bus
    to register with). binds: host path -> container path, read-only."""
    out = (STATE / host.name / "nspawn.log").open("w")
    cmd = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
           f"--network-namespace-path=/run/netns/{host.netns}", "-D", str(merged(host)), "-b",
           f"--machine={host.netns}", f"--hostname={host.hostname}",
           "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=passive",
           *[f"--bind-ro={src}:{dst}" for src, dst in binds.items()]]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: enter_own_cgroup(host))
    (STATE / host.name / "nspawn.pid").write_text(str(proc.pid))


def contained_run(host: Host, binds: dict[str, str], cmd: list[str]) -> subprocess.CompletedProcess:
    """Run one command in the host's tree and network namespace before it boots (a one-shot
    container: its own /proc and /dev, the same read-only binds as the booted relay)."""
    return run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe",
                f"--network-namespace-path=/run/netns/{host.netns}", "-D", str(merged(host)),
                f"--hostname={host.hostname}", "--resolv-conf=off", "--timezone=off",
                "--link-journal=no", *[f"--bind-ro={src}:{dst}" for src, dst in binds.items()],
                "env", "-i", *RELAY_ENV, *cmd], capture=True, preexec_fn=lambda: enter_own_cgroup(host))


def leader(host: Host) -> int | None:
    """The PID (on this machine) of the container's systemd, or None before it runs."""
    try:
        nspawn = int((STATE / host.name / "nspawn.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        children = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def wait_booted(host: Host, timeout: float = 60) -> str:
    """Wait until the container's systemd has finished starting up; return its state
    (running, or degraded when a unit failed)."""
    deadline = time.monotonic() + timeout
    # systemd answers systemctl once its private socket exists.
    while (pid := leader(host)) is None or not Path(f"/proc/{pid}/root/run/systemd/private").exists():
        if time.monotonic() > deadline:
            raise LabError(f"{host.name}: systemd-nspawn did not start: {(STATE / host.name / 'nspawn.log').read_text()}")
        time.sleep(0.1)
    left = max(1.0, deadline - time.monotonic())
    r = run(in_host(host, ["timeout", str(int(left)), "systemctl", "is-system-running", "--wait"]),
            check=False, capture=True)
    return r.stdout.strip() or r.stderr.strip()


def poweroff(host: Host, timeout: float = 20) -> None:
    """Shut the container down (systemd stops every unit), then wait for systemd-nspawn."""
    try:
        nspawn = int((STATE / host.name / "nspawn.pid").read_text())
    except (OSError, ValueError):
        return
    if leader(host) is not None:
        run(in_host(host, ["systemctl", "poweroff", "--no-block"]), check=False, capture=True)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{nspawn}").exists() and time.monotonic() < deadline:
        try:  # reap it if it is our child (lab up in this process)
            os.waitpid(nspawn, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)


def nspawn_lock(host: Host) -> Path | None:
    """systemd-nspawn's lock file for a tree (named after its device and inode); a killed
    run leaves it behind, and the next boot of the tree would say it is busy."""
    try:
        st = os.stat(merged(host))
    except OSError:
        return None
    return NSPAWN_LOCKS / f"inode-{st.st_dev}:{st.st_ino}"


# ---------------------------------------------------------------- commands on hosts


def in_host(host: Host, cmd: list[str]) -> list[str]:
    """The command line that runs cmd on host (in its namespace, in its filesystem)."""
    if host.booted:
        pid = leader(host)
        if pid is None:
            raise LabError(f"{host.name} is not running")
        return ["nsenter", "-t", str(pid), "-a", "env", "-i", *RELAY_ENV, *cmd]
    base = ["ip", "netns", "exec", host.netns]
    if host.chrooted:
        base += ["chroot", str(merged(host))]
    return base + cmd


def host_run(host: Host, cmd: list[str], check: bool = True, capture: bool = False, **kw):
    return run(in_host(host, cmd), check=check, capture=capture, **kw)


def host_spawn(host: Host, cmd: list[str], logfile: str, env: dict | None = None) -> None:
    """Start a long-running process on a host that has no systemd, detached, its output in
    logfile (a path on that host)."""
    envs = [f"{k}={v}" for k, v in (env or {}).items()]
    shell = f"exec env {' '.join(map(shlex.quote, envs))} {shlex.join(cmd)} >>{shlex.quote(logfile)} 2>&1 </dev/null"
    subprocess.Popen(in_host(host, ["sh", "-c", shell]), start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_port(host: Host, ip: str, port: int, timeout: float = 30.0) -> None:
    script = (
        "import socket,sys,time\n"
        f"end=time.time()+{timeout}\n"
        "while time.time()<end:\n"
        "    try:\n"
        f"        socket.create_connection(('{ip}',{port}),1).close(); sys.exit(0)\n"
        "    except OSError: time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    r = run(["ip", "netns", "exec", host.netns, sys.executable, "-c", script], check=False)
    if r.returncode != 0:
        raise LabError(f"{host.name}: nothing listens on {ip}:{port} after {timeout:.0f} s")


def pids_of(host: Host) -> list[int]:
    if not netns_exists(host.netns):
        return []
    r = run(["ip", "netns", "pids", host.netns], capture=True, check=False)
    return [int(p) for p in r.stdout.split()]

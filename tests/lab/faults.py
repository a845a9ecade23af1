"""What the fault tests share: a run of many messages in the background, counting what
arrived in a mailbox by Message-ID, waiting until nothing is in flight, and the one line
of figures each scenario prints (sent / accepted / delivered / lost / duplicated)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from conftest import HERE, labmod, relay_file

MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^@>]+)@", re.IGNORECASE | re.MULTILINE)


def mailbox_counts(relay: str, addr: str, prefix: str, inside: bool = False) -> Counter:
    """How often each message of a run (Message-ID <prefix-i@...>) is in the account's maildir.

    Counted per stored file, not per directory entry seen: Dovecot moves a file from new/
    to cur/ (keeping its base name, the part before ``:2,``) whenever it syncs the mailbox,
    so a file read in new/ can be met again in cur/ a moment later, and must count once.
    new/ is read before cur/ is listed, so a file moving meanwhile is met at least once.

    Read from this machine's view of the relay's tree, or with ``inside`` as the relay's own
    processes see it (a file system mounted inside the relay is invisible from here)."""
    path = f"{labmod.paths(relay)['mailboxesDir']}/{addr}"
    ids: dict[str, str] = {}  # base name of the stored file -> its Message-ID

    def note(name: str, head: bytes) -> None:
        for mid in MESSAGE_ID.findall(head):
            if mid.decode().startswith(prefix + "-"):
                ids[name.partition(":")[0]] = mid.decode()

    if inside:
        # One loop per directory, so cur/* is expanded only after new/ has been read.
        loop = ('for f in {d}/*; do m=$(grep -a -i -m1 "^Message-ID:" "$f" 2>/dev/null) '
                '&& printf "%s\\t%s\\n" "${{f##*/}}" "$m"; done')
        script = f"cd '{path}' 2>/dev/null || exit 0; {loop.format(d='new')}; {loop.format(d='cur')}; exit 0"
        out = labmod.host_run(labmod.BY_NAME[relay], ["sh", "-c", script], capture=True).stdout
        for line in out.splitlines():
            name, _, header = line.partition("\t")
            note(name, header.encode())
        return Counter(ids.values())
    home = relay_file(relay, path)
    for sub in ("new", "cur"):
        folder = home / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                head = path.read_bytes()[:65536]
            except FileNotFoundError:  # moved from new/ to cur/ meanwhile: met there
                continue
            note(path.name, head)
    return Counter(ids.values())


def queue_size(relay: str) -> int:
    """Messages in a relay's Postfix queues (active, deferred, ...)."""
    out = labmod.host_run(labmod.BY_NAME[relay], ["postqueue", "-j"], capture=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def wait_until(condition, timeout: float, interval: float = 0.5, what: str = "condition") -> float:
    """Poll condition() until true; return the seconds it took. Fails after timeout."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def settle(relays: tuple[str, ...] = ("relay1", "relay2"), timeout: float = 180) -> float:
    """Wait until no relay holds a message any more: whatever arrives later is not coming."""
    return wait_until(lambda: all(queue_size(r) == 0 for r in relays), timeout, 1.0, "empty queues")


class Burst:
    """mailcheck.py burst on the client host, in the background."""

    def __init__(self, to: str, accounts: list[tuple[str, str]], count: int, prefix: str,
                 deadline: float = 240, pad: int = 0) -> None:
        self.progress = Path(tempfile.mkstemp(prefix="cmf-progress-")[1])
        cmd = labmod.in_host(labmod.CLIENT, [
            sys.executable, str(HERE / "mailcheck.py"), "--cafile", str(labmod.STATE / "ca/ca.pem"),
            "burst", "--to", to, "--count", str(count), "--prefix", prefix, "--deadline", str(deadline),
            "--pad", str(pad), "--progress", str(self.progress),
            *[arg for addr, pw in accounts for arg in ("--account", f"{addr}:{pw}")]])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def done(self) -> int:
        try:
            return int(self.progress.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def wait_progress(self, n: int, timeout: float = 120) -> None:
        wait_until(lambda: self.done() >= n or self.proc.poll() is not None, timeout, 0.1, f"{n} messages sent")

    def result(self, timeout: float = 400) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        self.progress.unlink(missing_ok=True)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out)


@dataclass
class Figures:
    """One scenario's outcome, as the issue's table has it."""

    scenario: str
    sent: int
    accepted: int
    delivered: int
    lost: int
    duplicated: int
    temporary: int

    def line(self) -> str:
        return (f"FAULT {self.scenario}: sent {self.sent} / accepted {self.accepted} / delivered "
                f"{self.delivered} / lost {self.lost} / duplicated {self.duplicated} "
                f"(4xx or broken sessions, resent: {self.temporary})")


def figures(scenario: str, run: dict, counts: Counter) -> Figures:
    """Lost: accepted with a 250 and not in the mailbox. Duplicated: in it more than once."""
    accepted = {f"{run['prefix']}-{i}" for i in run["accepted"]}
    got = {mid for mid, n in counts.items() if n >= 1}
    f = Figures(scenario, run["sent"], len(accepted), len(got), len(accepted - got),
                sum(1 for n in counts.values() if n > 1), run["temporary"])
    print(f.line())
    return f

"""One screen that says whether a relay is healthy.

An operator who logs in to a relay wants to know at a glance: is every
service running, is mail stuck in the queue, when does the certificate
expire, how many accounts and how much mail are there, is the disk filling
up, are new accounts being created, and did last night's expiry run. Each
of these lives somewhere else (systemd, Postfix, a PEM file, the mail
directory), so this module gathers them, each from a source passed in, and
judges them: :func:`Status.problems` is what makes ``chatmail status`` exit 1.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import subprocess
from pathlib import Path

from cryptography import x509

from .cli import Runner, run_command
from .config import Config
from .fsreport import collect, human_size

log = logging.getLogger(__name__)

REQUIRED_UNITS = (
    "postfix.service",
    "dovecot.service",
    "doveauth.service",
    "filtermail.service",
    "filtermail-incoming.service",
    "chatmail-metadata.socket",
    "chatmail-metadata.service",
    "chatmail-lastlogin.socket",
    "chatmail-lastlogin.service",
    "chatmail-newemail.socket",
    "chatmail-newemail.service",
    "chatmail-expire.timer",
    "chatmail-fsreport.timer",
)
"""Units every relay runs: each must be active (ON_DEMAND_UNITS: or have left cleanly)."""

ON_DEMAND_UNITS = frozenset(
    {"chatmail-metadata.service", "chatmail-lastlogin.service", "chatmail-newemail.service"}
)
"""Started by their socket and gone when idle: inactive after a clean exit is healthy."""

OPTIONAL_UNITS = ("opendkim.service", "nginx.service", "unbound.service", "coturn.service")
"""Units of parts that can be switched off: checked only where installed."""

EXPIRY_SERVICE = "chatmail-expire.service"
"""The daily retention job; its last run is reported and must have succeeded."""

NIXOS_ACME_CERT = "/var/lib/acme/{domain}/fullchain.pem"
"""Where security.acme (NixOS, and the lab) keeps the certificate, if chatmail.ini's
``tls_cert_path`` (an upstream relay's acmetool path) does not exist."""

CERT_WARNING_DAYS = 14
"""ACME renews 30 days before expiry; a certificate this close to it was not renewed."""

SHOW_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result")
EXPIRY_PROPERTIES = ("Id", "LoadState", "Result", "ExecMainStatus", "ExecMainExitTimestamp")


@dataclasses.dataclass(frozen=True)
class UnitState:
    """What ``systemctl show`` says about one unit."""

    name: str
    load: str
    active: str
    sub: str
    result: str
    required: bool

    @property
    def installed(self) -> bool:
        return self.load == "loaded"

    @property
    def ok(self) -> bool:
        if not self.installed:
            return not self.required
        if self.name in ON_DEMAND_UNITS and self.active == "inactive":
            return self.result in ("success", "")
        return self.active == "active" and self.result in ("success", "")


@dataclasses.dataclass(frozen=True)
class ExpiryRun:
    """The last run of the daily expiry job."""

    finished: str
    """systemd's timestamp text, empty if it never ran since boot."""
    result: str
    exit_status: str

    @property
    def ok(self) -> bool:
        return not self.finished or self.result == "success"


@dataclasses.dataclass
class Status:
    """Everything ``chatmail status`` shows; a field is None where it could not be found out."""

    domain: str
    units: list[UnitState]
    unit_error: str | None
    queue: int | None
    queue_error: str | None
    cert_path: str
    cert_days: int | None
    cert_error: str | None
    accounts: int
    mail_bytes: int
    disk_free: int | None
    disk_total: int | None
    new_accounts: bool
    expiry: ExpiryRun | None

    def problems(self) -> list[str]:
        """What is wrong, one sentence each; empty when the relay is healthy."""
        found = []
        if self.unit_error:
            found.append(f"cannot ask systemd: {self.unit_error}")
        for unit in self.units:
            if not unit.ok:
                found.append(f"{unit.name} is {_unit_text(unit)}")
        if self.cert_days is None:
            found.append(f"no certificate: {self.cert_error}")
        elif self.cert_days < CERT_WARNING_DAYS:
            found.append(f"the certificate expires in {self.cert_days} days")
        if self.expiry is not None and not self.expiry.ok:
            found.append(f"the last expiry run failed ({self.expiry.result})")
        return found


# --- sources -----------------------------------------------------------------


def parse_systemctl_show(text: str) -> list[dict[str, str]]:
    """``systemctl show`` output for several units: blocks of KEY=VALUE split by blank lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    if current:
        blocks.append(current)
    return blocks


def unit_states(runner: Runner) -> list[UnitState]:
    """State of every chatmail unit, in the order of REQUIRED_UNITS then OPTIONAL_UNITS."""
    names = REQUIRED_UNITS + OPTIONAL_UNITS
    text = runner(["systemctl", "show", "--property=" + ",".join(SHOW_PROPERTIES), *names])
    blocks = parse_systemctl_show(text)
    # One block per unit asked, in that order, also for a unit that does not exist
    # (LoadState=not-found); the Id may be another name if the unit is an alias.
    if len(blocks) != len(names):
        raise ValueError(f"systemctl show answered {len(blocks)} units for {len(names)}")
    states = []
    for index, (name, block) in enumerate(zip(names, blocks)):
        states.append(
            UnitState(
                name=name,
                load=block.get("LoadState", "not-found"),
                active=block.get("ActiveState", "inactive"),
                sub=block.get("SubState", ""),
                result=block.get("Result", ""),
                required=index < len(REQUIRED_UNITS),
            )
        )
    return states


def last_expiry(runner: Runner) -> ExpiryRun | None:
    """The expiry job's last exit, or None if it is not installed."""
    text = runner(["systemctl", "show", "--property=" + ",".join(EXPIRY_PROPERTIES), EXPIRY_SERVICE])
    blocks = parse_systemctl_show(text)
    if not blocks or blocks[0].get("LoadState") != "loaded":
        return None
    block = blocks[0]
    finished = block.get("ExecMainExitTimestamp", "")
    if finished in ("n/a", "0"):
        finished = ""
    return ExpiryRun(finished, block.get("Result", ""), block.get("ExecMainStatus", ""))


def queue_size(runner: Runner) -> int:
    """Messages in Postfix's queue: ``postqueue -j`` prints one JSON object per message."""
    count = 0
    for line in runner(["postqueue", "-j"]).splitlines():
        if line.strip():
            json.loads(line)  # a line that is not a message means the format changed: fail loudly
            count += 1
    return count


def certificate_days(path: Path, now: datetime.datetime) -> int:
    """Whole days until the (first) certificate in the PEM file expires; negative if it has."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return (cert.not_valid_after_utc - now).days


def certificate_path(config: Config) -> Path:
    """chatmail.ini's certificate, or security.acme's if that one is not known or does not exist."""
    path = config.tls_cert_file or Path("/nonexistent")
    if config.tls_cert_mode == "acme" and not path.exists():
        nixos = Path(NIXOS_ACME_CERT.format(domain=config.mail_domain))
        if nixos.exists():
            return nixos
    return path


def collect_status(
    config: Config,
    *,
    runner: Runner = run_command,
    now: datetime.datetime | None = None,
    cert_path: Path | None = None,
) -> Status:
    """Gather everything; a source that fails is reported, not raised."""
    now = now or datetime.datetime.now(datetime.UTC)
    units: list[UnitState] = []
    unit_error = None
    expiry = None
    try:
        units = unit_states(runner)
        expiry = last_expiry(runner)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        unit_error = _error_text(exc)

    queue: int | None = None
    queue_error = None
    try:
        queue = queue_size(runner)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        queue_error = _error_text(exc)

    cert = cert_path or certificate_path(config)
    cert_days: int | None = None
    cert_error = None
    try:
        cert_days = certificate_days(cert, now)
    except (OSError, ValueError) as exc:
        cert_error = f"{cert}: {_error_text(exc)}"

    report = collect(config.mailboxes_dir, now=now.timestamp(), progress_every=0)
    disk_free = disk_total = None
    disk = config.mailboxes_dir
    while not disk.exists() and disk != disk.parent:
        disk = disk.parent  # not created yet: the file system it will be on
    try:
        usage = shutil.disk_usage(disk)
        disk_free, disk_total = usage.free, usage.total
    except OSError as exc:
        log.warning("cannot measure the disk of %s: %s", config.mailboxes_dir, exc)

    return Status(
        domain=config.mail_domain,
        units=units,
        unit_error=unit_error,
        queue=queue,
        queue_error=queue_error,
        cert_path=str(cert),
        cert_days=cert_days,
        cert_error=cert_error,
        accounts=report.accounts,
        mail_bytes=report.message_bytes,
        disk_free=disk_free,
        disk_total=disk_total,
        new_accounts=not config.nocreate_file.exists(),
        expiry=expiry,
    )


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        stderr = (exc.stderr or "").strip().splitlines()
        return f"{exc.cmd[0]} exited with {exc.returncode}" + (f": {stderr[-1]}" if stderr else "")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _unit_text(unit: UnitState) -> str:
    if not unit.installed:
        return "not installed"
    text = f"{unit.active} ({unit.sub})" if unit.sub else unit.active
    if unit.result not in ("success", ""):
        text += f", last result {unit.result}"
    return text


# --- the screen ----------------------------------------------------------------


def format_status(status: Status) -> str:
    """The status screen: one line per fact, then the problems (if any)."""
    lines = [f"chatmail relay {status.domain}", "", "units:"]
    if status.unit_error:
        lines.append(f"  (unknown: {status.unit_error})")
    width = max((len(unit.name) for unit in status.units), default=0)
    for unit in status.units:
        mark = "ok" if unit.ok and unit.installed else "--" if unit.ok else "!!"
        lines.append(f"  {mark} {unit.name:<{width}}  {_unit_text(unit)}")
    lines.append("")

    def fact(name: str, value: str) -> None:
        lines.append(f"{name + ':':<22}{value}")

    fact(
        "mail queue",
        f"{status.queue} messages" if status.queue is not None else f"unknown ({status.queue_error})",
    )
    if status.cert_days is not None:
        fact("certificate", f"expires in {status.cert_days} days ({status.cert_path})")
    else:
        fact("certificate", f"unknown ({status.cert_error})")
    fact("accounts", str(status.accounts))
    fact("mail stored", human_size(status.mail_bytes) + "B")
    if status.disk_free is not None and status.disk_total:
        share = 100 * status.disk_free / status.disk_total
        fact(
            "disk free", f"{human_size(status.disk_free)}B of {human_size(status.disk_total)}B ({share:.0f}%)"
        )
    else:
        fact("disk free", "unknown")
    fact("new accounts", "on" if status.new_accounts else "off (the nocreate file exists)")
    if status.expiry is None:
        fact("last expiry run", "unknown (chatmail-expire.service is not installed)")
    elif not status.expiry.finished:
        fact("last expiry run", "not since boot")
    else:
        fact(
            "last expiry run",
            f"{status.expiry.finished}, {status.expiry.result} (exit {status.expiry.exit_status})",
        )

    problems = status.problems()
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        lines += [f"  {problem}" for problem in problems]
    else:
        lines.append("all well")
    return "\n".join(lines) + "\n"

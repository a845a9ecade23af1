"""Prometheus metrics of a relay, without a metrics daemon.

Each chatmaild process counts what it does -- messages its filter accepted,
refusals by SMTP reply code, accounts created, push notifications queued,
sent and given up, what the expiry job removed -- in a small JSON file of
its own under ``metrics_dir``. ``chatmail metrics`` (run by a timer) adds
them up, measures what the file system holds (accounts, messages and bytes
stored, pushes waiting) and writes the Prometheus text format for the node
exporter's textfile collector, which is the one process that serves HTTP.

Why files rather than a ``/metrics`` endpoint in every daemon: no daemon
gets a listening port or an HTTP server it does not need, a restart or a
crash does not reset a counter (Prometheus would read that as a reset and
lose the increments since the last scrape), and the counts are there for
``chatmail metrics`` on a relay without any monitoring at all.

Why one file per process: no two processes write the same file, so a
daemon counts without a lock. It keeps its counts in memory and a worker
thread rewrites the file (a new file renamed over the old one) after each
change, coalescing bursts; the event loop never waits for the disk, and a
killed process loses at most the increments of the last write in flight.
A one-shot job (the expiry) adds its counts to its file at the end, under a
file lock, so two runs never lose each other's.

No private data can reach these files: a series is accepted only if its
name is one of :data:`METRICS` and each label value one of a fixed set (a
reply code is three digits), so neither an address nor a token nor any
part of a message is ever counted by name.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from .filedict import FileDict, write_bytes_atomic

log = logging.getLogger(__name__)

FILE_FORMAT = 1
"""Version of the counter files' JSON layout."""
SUFFIX = ".json"
TEXTFILE_NAME = "chatmail.prom"
"""The file ``chatmail metrics --textfile DIR`` writes; the node exporter reads ``*.prom``."""

Kind = Literal["counter", "gauge"]
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
"""A metric name and its labels, sorted by label name."""

DIRECTIONS = ("outgoing", "incoming")
DECLARED_CODES = ("450", "523", "552", "554")
"""Refusal codes shown as 0 before they first happen, so a rate over them is defined."""
_REPLY_CODE = re.compile(r"^[45][0-9][0-9]$")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric family: its type, its help text and the labels it may carry."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    source: str = "counted"
    """``counted`` by the daemons, or ``measured`` by ``chatmail metrics`` itself."""


# Every label value allowed, per label name (a tuple: shown as 0 from the start; a
# pattern: any matching value, and DECLARED_CODES from the start).
LABEL_VALUES: dict[str, tuple[str, ...] | re.Pattern[str]] = {
    "direction": DIRECTIONS,
    "code": _REPLY_CODE,
    "reason": ("retention", "quota"),
    "outcome": ("deadline", "dead_token"),
}

METRICS: tuple[Metric, ...] = (
    Metric(
        "chatmail_deliveries_accepted_total",
        "counter",
        "Messages the filter accepted and passed to Postfix, one per message whatever its number of "
        "recipients (outgoing: submitted by users; incoming: from other servers over SMTP or /mxdeliv).",
        ("direction",),
    ),
    Metric(
        "chatmail_refusals_total",
        "counter",
        "Replies of the filter that refused a message (or, for 450, a sender over its rate), by SMTP "
        "reply code: 523 not encrypted, 450 rate limit, 552 too large, 554 no valid DKIM signature or "
        "too complex, 4xx temporary errors.",
        ("direction", "code"),
    ),
    Metric("chatmail_accounts_created_total", "counter", "Accounts created by a first login."),
    Metric(
        "chatmail_pushes_queued_total", "counter", "Push notifications queued for the notification proxy."
    ),
    Metric("chatmail_pushes_sent_total", "counter", "Push notifications the notification proxy accepted."),
    Metric(
        "chatmail_push_attempts_failed_total",
        "counter",
        "Requests to the notification proxy that failed (each is retried until the notification's deadline).",
    ),
    Metric(
        "chatmail_pushes_dropped_total",
        "counter",
        "Push notifications given up: past their deadline, or the proxy said the device token is dead.",
        ("outcome",),
    ),
    Metric(
        "chatmail_expired_messages_total",
        "counter",
        "Messages the daily expiry removed: older than the retention settings, or to bring a mailbox "
        "under its quota.",
        ("reason",),
    ),
    Metric(
        "chatmail_expired_accounts_total",
        "counter",
        "Accounts the daily expiry removed after delete_inactive_users_after days without a login.",
    ),
    Metric(
        "chatmail_expired_bytes_total",
        "counter",
        "Bytes of files the daily expiry removed (messages and removed accounts).",
    ),
    Metric(
        "chatmail_expire_last_run_timestamp_seconds",
        "gauge",
        "When the daily expiry last finished removing (Unix time).",
    ),
    Metric("chatmail_stored_accounts", "gauge", "Accounts on the relay.", source="measured"),
    Metric(
        "chatmail_stored_messages",
        "gauge",
        "Messages stored in all mailboxes (maildir cur/ and new/).",
        source="measured",
    ),
    Metric(
        "chatmail_stored_message_bytes",
        "gauge",
        "Bytes of the messages stored in all mailboxes.",
        source="measured",
    ),
    Metric(
        "chatmail_pushes_pending",
        "gauge",
        "Push notifications waiting in the queue for the notification proxy.",
        source="measured",
    ),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


class MetricError(ValueError):
    """A series that is not one of :data:`METRICS` with allowed label values."""


def series_key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    """Check a series against the registry and return its key; raise MetricError if it is not allowed."""
    metric = BY_NAME.get(name)
    if metric is None:
        raise MetricError(f"unknown metric {name!r}")
    if set(labels) != set(metric.labels):
        raise MetricError(f"{name}: labels {sorted(labels)} instead of {sorted(metric.labels)}")
    for label, value in labels.items():
        allowed = LABEL_VALUES[label]
        ok = allowed.match(value) is not None if isinstance(allowed, re.Pattern) else value in allowed
        if not ok:
            raise MetricError(f"{name}: {label}={value!r} is not an allowed value")
    return name, tuple(sorted(labels.items()))


def reply_code(reply: str) -> str | None:
    """The three-digit code of a 4xx or 5xx SMTP reply line, or None for anything else."""
    code = reply[:3]
    return code if _REPLY_CODE.match(code) and (len(reply) == 3 or not reply[3].isdigit()) else None


# --- the counter files ------------------------------------------------------


def encode(values: Mapping[SeriesKey, float]) -> bytes:
    """A counter file's content: the format version and one entry per series."""
    samples = [
        {"name": name, "labels": dict(labels), "value": value}
        for (name, labels), value in sorted(values.items())
    ]
    return json.dumps({"format": FILE_FORMAT, "samples": samples}, indent=0).encode("utf-8")


def decode(data: Mapping[str, object], origin: str | Path) -> dict[SeriesKey, float]:
    """The series of a counter file's JSON object; entries that are not allowed are skipped (logged)."""
    values: dict[SeriesKey, float] = {}
    if not data:
        return values
    samples = data.get("samples")
    if data.get("format") != FILE_FORMAT or not isinstance(samples, list):
        log.warning("%s is not a counter file of format %s, ignored", origin, FILE_FORMAT)
        return values
    for sample in samples:
        try:
            if not isinstance(sample, dict) or not isinstance(sample.get("labels"), dict):
                raise MetricError("not a sample")
            value = sample["value"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MetricError(f"value {value!r} is not a number")
            key = series_key(str(sample["name"]), {str(k): str(v) for k, v in sample["labels"].items()})
        except (KeyError, MetricError) as exc:
            log.warning("%s: sample skipped: %s", origin, exc)
            continue
        values[key] = value
    return values


def read_counter_file(path: Path) -> dict[SeriesKey, float]:
    """The series stored in ``path``; empty if it is missing, unreadable or damaged (logged)."""
    try:
        return decode(FileDict(path).read(), path)
    except OSError as exc:
        log.warning("cannot read the counters in %s: %s", path, exc)
        return {}


def source_path(metrics_dir: Path, source: str) -> Path:
    """Where the process called ``source`` (e.g. ``filtermail-outgoing``) keeps its counts."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", source):
        raise ValueError(f"invalid metrics source name {source!r}")
    return metrics_dir / f"{source}{SUFFIX}"


class Counters:
    """The counts of one process, kept in its counter file (``path`` None: in memory only).

    A daemon creates one at start: it continues from what the file holds, and
    every change is written back by a worker thread. A one-shot job passes
    ``write_behind=False`` and calls :meth:`add_to_file` at its end.
    """

    def __init__(self, path: Path | None, *, write_behind: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._values: dict[SeriesKey, float] = {}
        self._queued = False
        self._failing = False  # a failed write is logged once, not once per event
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        if path is not None and write_behind:
            self._values = read_counter_file(path)
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metrics")

    @classmethod
    def for_source(cls, metrics_dir: Path | None, source: str, *, write_behind: bool = True) -> Counters:
        """The counters of ``source`` in ``metrics_dir`` (None: counted in memory only)."""
        path = None if metrics_dir is None else source_path(metrics_dir, source)
        return cls(path, write_behind=write_behind)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to a counter; raises MetricError for a series that is not allowed."""
        key = series_key(name, labels)
        if BY_NAME[name].kind != "counter" or amount < 0:
            raise MetricError(f"{name}: only counters go up, and only by a positive amount")
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount
        self._changed()

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge that a process knows best (e.g. when it last ran)."""
        key = series_key(name, labels)
        if BY_NAME[name].kind != "gauge":
            raise MetricError(f"{name} is not a gauge")
        with self._lock:
            self._values[key] = value
        self._changed()

    def get(self, name: str, **labels: str) -> float:
        """The current value of a series (0 if never counted)."""
        key = series_key(name, labels)
        with self._lock:
            return self._values.get(key, 0)

    def snapshot(self) -> dict[SeriesKey, float]:
        with self._lock:
            return dict(self._values)

    def _changed(self) -> None:
        if self._writer is None:
            return
        with self._lock:
            if self._queued:
                return  # the write already queued will take this change along
            self._queued = True
        try:
            self._writer.submit(self._write)
        except RuntimeError:  # closed: the final write has happened or is under way
            with self._lock:
                self._queued = False

    def _write(self) -> None:
        assert self.path is not None
        with self._lock:
            self._queued = False
            data = encode(self._values)
        try:
            write_bytes_atomic(self.path, data)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write the counters to %s (counting on in memory): %s", self.path, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("the counters are written to %s again", self.path)
            self._failing = False

    def flush(self) -> None:
        """Wait until every change so far is in the file (for shutdown and tests)."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Write what is pending and stop the worker thread."""
        if self._writer is not None:
            self.flush()
            self._writer.shutdown(wait=True)

    def add_to_file(self, path: Path | None = None) -> None:
        """Add these counts to the ones in ``path`` (default: own file), under its lock.

        Gauges replace the stored value. For one-shot jobs: two runs at the same
        time, or a run beside an operator's, never lose each other's counts.
        """
        path = path or self.path
        if path is None:
            return
        mine = self.snapshot()
        with FileDict(path).modify() as data:
            stored = decode(data, path)
            for key, value in mine.items():
                stored[key] = value if BY_NAME[key[0]].kind == "gauge" else stored.get(key, 0) + value
            data.clear()
            data.update(json.loads(encode(stored)))


# --- reading everything and writing the text format -----------------------


@dataclasses.dataclass(frozen=True)
class Storage:
    """What the mailboxes hold right now."""

    accounts: int
    messages: int
    message_bytes: int
    pushes_pending: int


def measure_storage(mailboxes_dir: Path, push_queue_dir: Path) -> Storage:
    """Count accounts (directories with a password), messages in ``cur``/``new`` and their bytes.

    Streams the tree with the expiry job's walker: a message's size comes
    from Dovecot's ``S=`` in its name, so no message is opened or stat-ed.
    """
    from .expire import iter_mailbox_files, iter_mailboxes
    from .user import PASSWORD_FILE

    accounts = messages = message_bytes = 0
    for entry in iter_mailboxes(mailboxes_dir):
        if not os.path.exists(os.path.join(entry.path, PASSWORD_FILE)):
            continue
        accounts += 1
        for info in iter_mailbox_files(entry.path):
            if info.parent in ("cur", "new"):
                messages += 1
                message_bytes += info.size
    try:
        pending = sum(1 for e in os.scandir(push_queue_dir) if e.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        pending = 0
    return Storage(accounts, messages, message_bytes, pending)


def read_counters(metrics_dir: Path) -> dict[SeriesKey, float]:
    """The sum of every process's counter file in ``metrics_dir`` (gauges: the largest value)."""
    total: dict[SeriesKey, float] = {}
    try:
        paths = sorted(
            p for p in metrics_dir.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")
        )
    except FileNotFoundError:
        return total
    for path in paths:
        for key, value in read_counter_file(path).items():
            if BY_NAME[key[0]].kind == "gauge":
                total[key] = max(total.get(key, value), value)
            else:
                total[key] = total.get(key, 0) + value
    return total


def initial_series() -> dict[SeriesKey, float]:
    """Every counted series that has a fixed set of label values, at 0.

    A counter that appears only with its first event has no earlier value to
    compute a rate from; shown as 0 from the start it has.
    """
    out: dict[SeriesKey, float] = {}
    for metric in METRICS:
        if metric.kind != "counter":
            continue
        combos: list[dict[str, str]] = [{}]
        for label in metric.labels:
            allowed = LABEL_VALUES[label]
            values = DECLARED_CODES if isinstance(allowed, re.Pattern) else allowed
            combos = [{**c, label: v} for c in combos for v in values]
        for labels in combos:
            out[series_key(metric.name, labels)] = 0
    return out


def collect(metrics_dir: Path | None, mailboxes_dir: Path, push_queue_dir: Path) -> dict[SeriesKey, float]:
    """Every series of the relay: the counters (if ``metrics_dir`` is set) and the measured gauges."""
    values: dict[SeriesKey, float] = {}
    if metrics_dir is not None:
        values.update(initial_series())
        values.update(read_counters(metrics_dir))
    storage = measure_storage(mailboxes_dir, push_queue_dir)
    values[series_key("chatmail_stored_accounts", {})] = storage.accounts
    values[series_key("chatmail_stored_messages", {})] = storage.messages
    values[series_key("chatmail_stored_message_bytes", {})] = storage.message_bytes
    values[series_key("chatmail_pushes_pending", {})] = storage.pushes_pending
    return values


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(values: Mapping[SeriesKey, float]) -> str:
    """The Prometheus text exposition format (version 0.0.4): HELP and TYPE, then the samples."""
    by_metric: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    for (name, labels), value in values.items():
        by_metric.setdefault(name, []).append((labels, value))
    lines: list[str] = []
    for metric in METRICS:
        samples = by_metric.get(metric.name)
        if not samples:
            continue
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in sorted(samples):
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            series = f"{metric.name}{{{text}}}" if text else metric.name
            lines.append(f"{series} {_number(value)}")
    return "\n".join(lines) + "\n"


def parse_text(text: str) -> dict[SeriesKey, float]:
    """Read samples back from the text format (what :func:`render` writes; for tests and checks)."""
    out: dict[SeriesKey, float] = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    pair = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = sample.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        labels = tuple(sorted((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                              for k, v in pair.findall(match[2] or "")))
        out[(match[1], labels)] = float(match[3])
    return out


def series_total(values: Mapping[SeriesKey, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels`` (for tests and reports)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= set(lab))

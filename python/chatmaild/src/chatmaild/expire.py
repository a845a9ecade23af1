"""chatmail-expire: the daily retention job, and the quota-warning hook.

A chatmail relay is a relay, not an archive: clients fetch their messages
within days, so the relay deletes what they have had time to fetch. Once a
day ``chatmail-expire`` walks ``mailboxes_dir`` and, per account:

1. removes the whole account if its last login (the ``password`` file's
   mtime, kept at day precision by the login tracker) is older than
   ``delete_inactive_users_after`` days;
2. removes a directory without a ``password`` file if it is empty (it is
   left alone, and reported, if not: we cannot tell what it is);
3. deletes message files (anything inside a ``cur``, ``new`` or ``tmp``
   directory, at any depth, so IMAP folders such as ``.DeltaChat/cur``
   count) older than ``delete_mails_after`` days, and large read messages
   (in ``cur``) older than ``delete_large_after`` days; a large message still
   in ``new`` has not been fetched yet and is kept;
4. trims the account to 70 % of its quota, oldest messages first;
5. deletes ``maildirsize`` if anything went, so Dovecot recounts the quota.

Everything that is not a message (the password, the encryption marker,
metadata, Dovecot's index and uid files) is never touched except by step 1.

The tree is streamed with :func:`os.scandir`, one account at a time: a relay
has hundreds of thousands of accounts and tens of millions of files, and the
job must neither hold them in memory nor stop because Dovecot moved or
deleted a file while it was looking (a file that vanishes is simply skipped).

Both halves cost CPU rather than disk: the scan is Python code run for
every file of the relay, and each ``unlink`` of a message costs the kernel
some 10-20 microseconds (journal and directory updates), while the disk
keeps up with far more of them in flight. The accounts are therefore shared
out, by a hash of their names, among ``--jobs`` worker processes (one per
CPU by default), each a complete job on its share: one interpreter lock per
process, so the scans run side by side. With ``--remove`` each worker hands
an account, once scanned, to a small pool of threads that deletes its files
(by name, in the directory opened once) while the next accounts are
scanned; an account's ``maildirsize`` goes only after all its deletions.
The process the job started as is the first worker; between its own
accounts it copies the other workers' lines to its output (so with several
workers the list comes in no fixed order), adds up their counts and prints
the progress. A worker that fails makes the whole run fail. Nothing is
synced: a file whose deletion a crash undoes is simply deleted by the next
run.

It is a dry run unless ``--remove`` is given, so an operator can see what a
changed setting would delete before it does.

``chatmail-quota-expire`` is the script Dovecot runs when a mailbox crosses
75 % of its quota: it deletes the oldest messages until the mailbox is under
the target it is given, so the relay makes room instead of bouncing mail.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import operator
import os
import re
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn, TextIO

from .cli import add_config_argument, non_negative_int
from .config import Config, ConfigError, read_config
from .logsetup import setup_logging
from .user import PASSWORD_FILE

if TYPE_CHECKING:
    import concurrent.futures

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400
MIB = 1024 * 1024

LARGE_MESSAGE_BYTES = 200_000
"""A message above this size counts as large (upstream's value) and expires sooner once read."""

MESSAGE_DIRS = frozenset({"cur", "new", "tmp"})
"""Maildir subdirectories that hold messages; every other file is account data."""
QUOTA_DIRS = frozenset({"cur", "new"})
"""The subdirectories whose messages the quota counts (directly in the mailbox only)."""

QUOTA_TRIM_SHARE = 0.7
"""The daily job trims each mailbox to this share of its quota (Dovecot's warning fires at 75 %)."""

MIN_TRIM_AGE_SECONDS = SECONDS_PER_DAY
"""Quota trimming never deletes a message younger than this: the client may not have seen it yet."""

QUOTA_FILE = "maildirsize"
"""Dovecot's cached quota usage; deleting it makes Dovecot recount after we deleted messages."""

DEFAULT_PROGRESS_EVERY = 1000

REMOVE_WORKERS = 16
"""Threads deleting files with ``--remove``, shared among the worker processes: deletions that
wait for the disk overlap, while many more than this contend in the kernel (measured: one
thread 13 000 unlinks/s, 16 threads 47 000/s, 64 threads 30 000/s)."""
MIN_REMOVE_WORKERS = 4
"""Deleting threads in each worker process, at least."""
MAX_PENDING_ACCOUNTS = 64
"""Accounts scanned ahead of their deletions; bounds the memory the job holds."""
REMOVE_SWITCH_INTERVAL = 0.0002
"""Seconds the scanning thread may hold the interpreter lock while deleting threads wait for it."""
MAX_JOBS = 4
"""At most this many worker processes by default: beyond that the disk, not the CPU, limits."""

# Dovecot's maildir file names: "<unix time>.<unique part>,S=<size>[,W=<size>][:2,<flags>]".
# S= is the logical (uncompressed) size, which is what the quota counts.
_MAILDIR_NAME = re.compile(r"^(?P<time>\d+)\..*?,S=(?P<size>\d+)")
# The same over many names joined by NUL: (name, time, size) of each that matches.
_MAILDIR_NAMES = re.compile(r"(?:^|\0)((\d+)\.[^\0\n]*?,S=(\d+)[^\0]*)").findall
_ARRIVAL = operator.itemgetter(1)
_SIZE = operator.itemgetter(2)


@dataclasses.dataclass
class Removed:
    """How many files and bytes were (or, in a dry run, would be) deleted."""

    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size


@dataclasses.dataclass
class ExpireStats:
    """The outcome of one run, for the summary line and for tests."""

    accounts_scanned: int = 0
    accounts_removed: int = 0
    account_files_removed: int = 0
    account_bytes_removed: int = 0
    empty_dirs_removed: int = 0
    nonempty_dirs_skipped: int = 0
    files_scanned: int = 0
    files_removed: int = 0
    bytes_removed: int = 0
    quota_files_removed: int = 0


class Reporter:
    """Where the job's lines go: actions to stdout, progress to stderr.

    Kept apart from logging because these lines are the job's output (an
    operator reads the dry run's list), while the logger carries problems.
    """

    def __init__(self, *, verbose: bool, dry_run: bool, out: TextIO, err: TextIO) -> None:
        self.verbose = verbose
        self.dry_run = dry_run
        self.out = out
        self.err = err
        self.verb = "would remove" if dry_run else "removing"

    def file(self, path: str, mtime: float, size: int) -> None:
        if self.verbose:
            day = time.strftime("%b %d", time.gmtime(mtime))
            print(f"{self.verb} {day} {size:>9} {path}", file=self.out)

    def account(self, path: str, why: str) -> None:
        if self.verbose or self.dry_run:
            print(f"{self.verb} account {path} ({why})", file=self.out)

    def note(self, text: str) -> None:
        print(text, file=self.out)

    def progress(self, text: str) -> None:
        print(text, file=self.err, flush=True)


# --- walking -------------------------------------------------------------


def _scandir(path: str) -> Iterator[os.DirEntry[str]]:
    """Entries of ``path``, or none if it vanished or cannot be read (logged)."""
    with _open_dir(path) as entries:
        yield from entries


def _open_dir(path: str) -> contextlib.AbstractContextManager[Iterator[os.DirEntry[str]]]:
    """``os.scandir(path)``, or an empty listing if it vanished or cannot be read (logged).

    The scandir iterator itself rather than a generator around it, for the
    walk that every entry of the tree passes through.
    """
    try:
        return os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except PermissionError as exc:
        log.warning("cannot read directory, skipped: %s", exc)
    return contextlib.nullcontext(iter(()))


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's own metadata, or None if it vanished since it was listed."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


class FileInfo(NamedTuple):
    """One regular file found under a mailbox.

    A tuple rather than a dataclass: one is made per file, millions per run.
    """

    path: str
    name: str
    parent: str
    """Name of the directory that holds the file (``cur``, ``new``, ``tmp`` for messages)."""
    top_level: bool
    """True if the parent is directly in the mailbox (only there does quota trimming look)."""
    mtime: float
    """Delivery time from a Dovecot message file name, else the file's mtime."""
    size: int
    """``S=`` size from a Dovecot message file name, else the file's size."""
    logical_size: int | None = None
    """The ``S=`` size when the name carries one (what the quota counts), else None."""

    @property
    def is_message(self) -> bool:
        return self.parent in MESSAGE_DIRS


def iter_mailbox_files(mailbox: str) -> Iterator[FileInfo]:
    """Yield every regular file under ``mailbox``, depth first, as it is read.

    Only the open directory handles along the current path are held, never a
    list of files. Symbolic links are neither followed nor reported. A
    message whose name is Dovecot's ``<time>.<unique>,S=<size>...`` is not
    ``stat``-ed: the name gives its delivery time and size, and the type
    comes from the directory listing, so a message costs no system call.
    Any other file is ``stat``-ed.
    """
    yield from _iter_files(mailbox, os.path.basename(mailbox))


def _iter_files(mailbox: str, mailbox_name: str) -> Iterator[FileInfo]:
    # One loop over a stack of directories rather than recursive generators: every
    # file of a relay passes through here, and each generator level it climbs costs.
    match = _MAILDIR_NAME.match
    pending = [(mailbox, mailbox_name, 0)]
    while pending:
        directory, name, depth = pending.pop()
        named = name in MESSAGE_DIRS
        top_level = depth == 1
        subdirs = []
        with _open_dir(directory) as entries:
            for entry in entries:
                entry_name = entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    subdirs.append((entry.path, entry_name, depth + 1))
                    continue
                parsed = match(entry_name) if named else None
                if parsed is not None:
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    size = int(parsed[2])
                    yield FileInfo(entry.path, entry_name, name, top_level, int(parsed[1]), size, size)
                elif _is_file(entry):
                    st = _stat(entry)
                    if st is not None:
                        yield FileInfo(entry.path, entry_name, name, top_level, st.st_mtime, st.st_size)
        pending.extend(reversed(subdirs))


def iter_mailboxes(mailboxes_dir: Path) -> Iterator[os.DirEntry[str]]:
    """Yield the account directories (names containing ``@``) as they are read."""
    for entry in _scandir(str(mailboxes_dir)):
        if "@" in entry.name and _is_dir(entry):
            yield entry


def _unlink(path: str) -> bool:
    """Delete a file; False if it was already gone or cannot be deleted (logged)."""
    return _unlink_in(None, path, path)


# A handle for *at() calls only (no read permission needed), never through a symbolic link.
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_parent(path: str) -> int | None:
    """A handle on the directory ``path`` to delete in, or None if it is gone or not one (logged)."""
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot delete in %s: %s", path, exc)
        return None


def _unlink_in(directory: int | None, name: str, path: str) -> bool:
    """Delete ``name`` in the open ``directory`` (None: ``name`` is a path); False if it was
    already gone or cannot be deleted (logged, ``path`` naming it)."""
    try:
        os.unlink(name, dir_fd=directory)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot delete %s: %s", path, exc)
        return False
    return True


def remove_tree(path: str, *, remove: bool) -> Removed:
    """Delete a directory tree bottom-up and count its files; only count if not ``remove``.

    Written out rather than ``shutil.rmtree`` so the summary can say how
    much went, and so that files vanishing underneath are not errors.
    """
    removed = Removed()
    named = os.path.basename(path) in MESSAGE_DIRS
    for entry in _scandir(path):
        if _is_dir(entry):
            sub = remove_tree(entry.path, remove=remove)
            removed.files += sub.files
            removed.bytes += sub.bytes
            continue
        parsed = _MAILDIR_NAME.match(entry.name) if named and _is_file(entry) else None
        if parsed is not None:
            size = int(parsed["size"])
        else:
            st = _stat(entry)
            if st is None:
                continue
            size = st.st_size
        if not remove or _unlink(entry.path):
            removed.add(size)
    if remove:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove directory %s: %s", path, exc)
    return removed


# --- quota trimming ------------------------------------------------------


def parse_maildir_name(name: str) -> tuple[int, int] | None:
    """Return (delivery time, logical size) from a Dovecot maildir file name, or None."""
    match = _MAILDIR_NAME.match(name)
    if match is None:
        return None
    return int(match["time"]), int(match["size"])


def expire_to_target(
    mailbox: str | Path,
    target_bytes: int,
    *,
    now: float | None = None,
    remove: bool = True,
    exclude: frozenset[str] | set[str] = frozenset(),
    on_remove: Callable[[str, float, int], None] | None = None,
) -> Removed:
    """Delete the oldest messages of ``mailbox`` until their sizes sum to at most ``target_bytes``.

    Only files directly in ``cur`` and ``new`` with Dovecot's ``,S=<size>``
    in their name count, and by that logical size, because that is what the
    quota counts. Age comes from the delivery time in the name, which
    copying or flag changes do not alter. Messages younger than a day are
    never deleted (trimming stops at the first one): a client may not have
    fetched them yet. ``exclude`` holds paths a dry run has already counted
    as deleted. Returns the number of messages and their on-disk bytes.
    """
    now = time.time() if now is None else now
    candidates: list[tuple[int, int, str]] = []
    total = 0
    for sub in ("cur", "new"):
        for entry in _scandir(os.path.join(os.fspath(mailbox), sub)):
            if entry.path in exclude or not _is_file(entry):
                continue
            parsed = parse_maildir_name(entry.name)
            if parsed is None:
                continue
            delivered, size = parsed
            total += size
            candidates.append((delivered, size, entry.path))
    removed = Removed()
    if total <= target_bytes:
        return removed
    candidates.sort()
    youngest_allowed = now - MIN_TRIM_AGE_SECONDS
    for delivered, size, path in candidates:
        if total <= target_bytes or delivered > youngest_allowed:
            break
        try:
            disk_size = os.stat(path, follow_symlinks=False).st_size
        except FileNotFoundError:
            total -= size  # deleted by someone else meanwhile: it no longer counts
            continue
        if remove and not _unlink(path):
            continue
        total -= size
        removed.add(disk_size)
        if on_remove is not None:
            on_remove(path, delivered, disk_size)
    return removed


def _forget_quota(mailbox: str) -> None:
    try:
        os.unlink(os.path.join(mailbox, QUOTA_FILE))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot delete %s of %s: %s", QUOTA_FILE, mailbox, exc)


# --- the daily job -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cutoffs:
    """Timestamps before which things go, computed once per run."""

    now: float
    inactive: float
    mails: float
    large: float
    quota_target_bytes: int

    @classmethod
    def from_config(cls, config: Config, now: float) -> Cutoffs:
        return cls(
            now=now,
            inactive=now - config.delete_inactive_users_after * SECONDS_PER_DAY,
            mails=now - config.delete_mails_after * SECONDS_PER_DAY,
            large=now - config.delete_large_after * SECONDS_PER_DAY,
            quota_target_bytes=int(config.max_mailbox_size * MIB * QUOTA_TRIM_SHARE),
        )


class Expiry:
    """Applies the retention rules to one account after another.

    With a ``pool`` (``--remove`` of the daily job) the deletions of an
    account run in the pool while the next accounts are scanned;
    :meth:`finish` waits for them. Without one everything happens in
    :meth:`process_mailbox` itself.
    """

    def __init__(
        self,
        cutoffs: Cutoffs,
        *,
        remove: bool,
        reporter: Reporter,
        pool: concurrent.futures.Executor | None = None,
    ) -> None:
        self.cutoffs = cutoffs
        self.remove = remove
        self.reporter = reporter
        self.stats = ExpireStats()
        self.pool = pool
        # Accounts whose deletions are under way, oldest first: a finishing function each.
        self._pending: collections.deque[Callable[[], None]] = collections.deque()

    def process_mailbox(self, mailbox: str) -> None:
        """Apply steps 1-5 of the module docstring to one account directory."""
        self.stats.accounts_scanned += 1
        try:
            last_login: float | None = os.stat(
                os.path.join(mailbox, PASSWORD_FILE), follow_symlinks=False
            ).st_mtime
        except FileNotFoundError:
            last_login = None
        except OSError as exc:
            log.warning("cannot read last login of %s, account kept: %s", mailbox, exc)
            return

        if last_login is not None and last_login < self.cutoffs.inactive:
            day = time.strftime("%Y-%m-%d", time.gmtime(last_login))
            self.reporter.account(mailbox, f"last login {day}")
            self._later(lambda: remove_tree(mailbox, remove=self.remove), self._count_account)
            return

        if last_login is None:
            self._remove_if_empty(mailbox)
            return

        doomed, quota_total = self._scan(mailbox)
        trimmed = Removed()
        if quota_total > self.cutoffs.quota_target_bytes:
            # The doomed files may still be on disk: they do not count again.
            trimmed = expire_to_target(
                mailbox,
                self.cutoffs.quota_target_bytes,
                now=self.cutoffs.now,
                remove=self.remove,
                exclude={path for path, _, _ in doomed},
                on_remove=self.reporter.file,
            )
            self.stats.quota_files_removed += trimmed.files
        if not self.remove:
            self._count_files(doomed, [True] * len(doomed), trimmed)
            return
        paths = [path for path, _, _ in doomed]
        self._later(
            lambda: _unlink_all(mailbox, paths, forget_quota=trimmed.files > 0),
            lambda done: self._count_files(doomed, done, trimmed),
        )

    def _scan(self, mailbox: str) -> tuple[list[tuple[str, float, int]], int]:
        """The expired messages of one account (path, time, size), and the logical size of
        the messages that stay in its top-level ``cur`` and ``new``.

        :func:`iter_mailbox_files` with the rules folded in: this loop sees
        every file of the relay, so it makes no object per file it keeps and
        stats only files whose name does not say their time and size.
        """
        doomed: list[tuple[str, float, int]] = []
        quota_total = scanned = 0
        # (directory, holds messages, is a cur, its messages count for the quota)
        pending = [(mailbox, False, False, False)]
        while pending:
            directory, named, in_cur, quota_dir = pending.pop()
            with _open_dir(directory) as entries:
                listed = list(entries)
            subdirs: list[tuple[str, bool, bool, bool]] = []
            if named:
                rest, found, kept_bytes = self._scan_messages(directory, listed, in_cur, doomed)
                scanned += found
                if quota_dir:
                    quota_total += kept_bytes
            else:
                rest = listed
            for entry in rest:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        name = entry.name
                        # The quota counts the top-level cur and new only.
                        quota = directory == mailbox and name in QUOTA_DIRS
                        subdirs.append((entry.path, name in MESSAGE_DIRS, name == "cur", quota))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if not named:
                        scanned += 1  # account data: counted, never touched
                        continue
                    # A message whose name does not say when it came and how big it is.
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since it was listed
                except OSError as exc:
                    log.warning("cannot read %s, skipped: %s", entry.path, exc)
                    continue
                scanned += 1
                modified, size = st.st_mtime, st.st_size
                if modified < self.cutoffs.mails or (
                    in_cur and size > LARGE_MESSAGE_BYTES and modified < self.cutoffs.large
                ):
                    doomed.append((entry.path, modified, size))
            pending.extend(reversed(subdirs))
        self.stats.files_scanned += scanned
        return doomed, quota_total

    def _scan_messages(
        self,
        directory: str,
        listed: list[os.DirEntry[str]],
        in_cur: bool,
        doomed: list[tuple[str, float, int]],
    ) -> tuple[list[os.DirEntry[str]], int, int]:
        """The regular files of a message directory whose names carry time and size.

        Adds the expired ones to ``doomed``; returns the entries left for the
        careful per-entry path (directories, other files), the number of
        messages found and the logical size of those that stay. The names are matched in one
        regular expression pass over all of them, NUL-separated (a file name
        cannot hold a NUL): a relay has a million messages, and a Python-level
        step per message is most of the job's time.
        """
        try:
            files = [entry.name for entry in listed if entry.is_file(follow_symlinks=False)]
        except OSError:
            return listed, 0, 0  # the per-entry path logs what cannot be read
        found = _MAILDIR_NAMES("\0".join(files))
        mails, large = self.cutoffs.mails, self.cutoffs.large
        prefix = os.path.join(directory, "")
        # Whole columns at a time (map runs in C); a Python step only per expired message.
        arrivals = list(map(int, map(_ARRIVAL, found)))
        sizes = list(map(int, map(_SIZE, found)))
        kept_bytes = sum(sizes)
        if in_cur:
            expired = [
                i for i, (t, size) in enumerate(zip(arrivals, sizes))
                if t < mails or (t < large and size > LARGE_MESSAGE_BYTES)
            ]
        else:
            expired = [i for i, t in enumerate(arrivals) if t < mails]
        for i in expired:
            doomed.append((prefix + found[i][0], arrivals[i], sizes[i]))
            kept_bytes -= sizes[i]
        if len(found) == len(listed):
            return [], len(found), kept_bytes
        matched = {name for name, _, _ in found}
        return [entry for entry in listed if entry.name not in matched], len(found), kept_bytes

    def _later(self, work: Callable[[], object], count: Callable[[object], None]) -> None:
        """Run ``work`` (deletions) in the pool, or now; ``count`` its result, in account order."""
        if self.pool is None:
            count(work())
            return
        future = self.pool.submit(work)
        self._pending.append(lambda: count(future.result()))
        while len(self._pending) > MAX_PENDING_ACCOUNTS:
            self._pending.popleft()()

    def finish(self) -> None:
        """Wait for every deletion under way and count it."""
        while self._pending:
            self._pending.popleft()()

    def _count_account(self, removed: object) -> None:
        assert isinstance(removed, Removed)
        self.stats.accounts_removed += 1
        self.stats.account_files_removed += removed.files
        self.stats.account_bytes_removed += removed.bytes

    def _count_files(self, doomed: list[tuple[str, float, int]], done: object, trimmed: Removed) -> None:
        """Count (and list) the deletions that happened; a file someone else deleted first does not count."""
        assert isinstance(done, list)
        removed = Removed(trimmed.files, trimmed.bytes)
        verbose = self.reporter.verbose
        for (path, mtime, size), ok in zip(doomed, done):
            if ok:
                removed.add(size)
                if verbose:
                    self.reporter.file(path, mtime, size)
        self.stats.files_removed += removed.files
        self.stats.bytes_removed += removed.bytes

    def _remove_if_empty(self, mailbox: str) -> None:
        """A directory without a password is removed only if empty: we cannot tell what else it holds."""
        if any(True for _ in _scandir(mailbox)):
            self.stats.nonempty_dirs_skipped += 1
            self.reporter.note(f"Skipped deleting {mailbox}, doesn't have last_login but isn't empty")
            return
        self.reporter.account(mailbox, "empty, no password")
        if self.remove:
            try:
                os.rmdir(mailbox)
            except FileNotFoundError:
                return
            except OSError as exc:
                # A file arrived after we looked; keep it.
                log.warning("cannot remove %s: %s", mailbox, exc)
                return
        self.stats.empty_dirs_removed += 1


def _unlink_all(mailbox: str, paths: list[str], *, forget_quota: bool) -> list[bool]:
    """Delete ``paths`` (which of them went), then ``maildirsize`` if anything went.

    Each file is deleted by its name in its directory, opened once: the
    kernel then does not walk the whole path again for every file, which is
    a good part of an unlink's cost. A directory that is gone, or that is
    no longer a directory (say, a symbolic link now), loses nothing.
    """
    done = []
    directories: dict[str, int | None] = {}
    try:
        for path in paths:
            parent, _, name = path.rpartition("/")
            if parent not in directories:
                directories[parent] = _open_parent(parent)
            fd = directories[parent]
            done.append(fd is not None and _unlink_in(fd, name, path))
    finally:
        for fd in directories.values():
            if fd is not None:
                os.close(fd)
    if forget_quota or any(done):
        _forget_quota(mailbox)
    return done


class WorkerFailed(Exception):
    """A worker process of the job died or failed: the run is incomplete."""


def default_jobs() -> int:
    """The processes ``chatmail-expire`` runs by default: one per usable CPU, at most :data:`MAX_JOBS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_JOBS))


def run_expire(
    config: Config,
    *,
    now: float,
    remove: bool,
    reporter: Reporter,
    maxnum: int | None = None,
    progress_every: int = DEFAULT_PROGRESS_EVERY,
    jobs: int = 1,
) -> ExpireStats:
    """Walk every account of ``config.mailboxes_dir`` once; return the counts.

    With ``jobs`` > 1 (and no ``maxnum``, which needs one count) the accounts
    are shared out among that many worker processes, see :func:`_run_workers`.
    Raises :class:`WorkerFailed` if one of them fails.
    """
    if not config.mailboxes_dir.is_dir():
        reporter.progress(f"no mailboxes found at: {config.mailboxes_dir}")
        return ExpireStats()
    cutoffs = Cutoffs.from_config(config, now)
    if jobs > 1 and maxnum is None:
        return _run_workers(config, cutoffs, remove=remove, reporter=reporter,
                            progress_every=progress_every, jobs=jobs)
    return _run_here(config, cutoffs, remove=remove, reporter=reporter, maxnum=maxnum,
                     progress_every=progress_every)


def _run_here(
    config: Config,
    cutoffs: Cutoffs,
    *,
    remove: bool,
    reporter: Reporter,
    maxnum: int | None = None,
    progress_every: int = 0,
    share: tuple[int, int] | None = None,
    tick: Callable[[ExpireStats], None] | None = None,
) -> ExpireStats:
    """The job in this process, over all accounts or over the ``share`` (index, count) of them."""
    threads = REMOVE_WORKERS if share is None else max(MIN_REMOVE_WORKERS, REMOVE_WORKERS // share[1])
    if not remove:
        return _run(config, Expiry(cutoffs, remove=False, reporter=reporter), maxnum, progress_every,
                    share, tick)
    import concurrent.futures  # only deleting needs threads

    # The scan holds the interpreter lock for up to the switch interval (5 ms) at a
    # time, while each deleting thread needs it for a moment after every unlink: a
    # shorter interval keeps the deletions flowing while this thread scans.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(REMOVE_SWITCH_INTERVAL)
    try:
        with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="expire") as pool:
            expiry = Expiry(cutoffs, remove=True, reporter=reporter, pool=pool)
            try:
                return _run(config, expiry, maxnum, progress_every, share, tick)
            finally:
                expiry.finish()
    finally:
        sys.setswitchinterval(interval)


def _run(
    config: Config,
    expiry: Expiry,
    maxnum: int | None,
    progress_every: int,
    share: tuple[int, int] | None = None,
    tick: Callable[[ExpireStats], None] | None = None,
) -> ExpireStats:
    reporter = expiry.reporter
    started = time.monotonic()
    for entry in iter_mailboxes(config.mailboxes_dir):
        if maxnum is not None and expiry.stats.accounts_scanned >= maxnum:
            break
        if share is not None and _share_of(entry.name, share[1]) != share[0]:
            continue
        expiry.process_mailbox(entry.path)
        if tick is not None:
            tick(expiry.stats)
        scanned = expiry.stats.accounts_scanned
        if progress_every and scanned % progress_every == 0:
            s = expiry.stats
            reporter.progress(
                f"expire: {scanned} accounts scanned, {s.accounts_removed} inactive, "
                f"{s.files_removed} files removed, {time.monotonic() - started:.1f}s"
            )
    return expiry.stats


def _share_of(name: str, jobs: int) -> int:
    """Which worker handles the account ``name``: by a hash of the name, so that every
    worker, listing the directory on its own, agrees even if accounts come or go meanwhile."""
    return zlib.crc32(os.fsencode(name)) % jobs


# --- worker processes ----------------------------------------------------
#
# A worker writes the job's output lines (the dry run's list, -v) to its pipe as they
# come, and records that start with a NUL, which no path holds: "\0p <inactive>
# <files removed>" after each account when progress is wanted, and "\0s <counts>" (the
# fields of ExpireStats in order) when it is done. The first worker, the process the
# job started as, copies the lines to its own output, sums the counts and prints the
# progress lines.

_STATS_FIELDS = [field.name for field in dataclasses.fields(ExpireStats)]


def _run_workers(
    config: Config, cutoffs: Cutoffs, *, remove: bool, reporter: Reporter, progress_every: int, jobs: int
) -> ExpireStats:
    """Run the job in ``jobs`` processes, each on the accounts :func:`_share_of` gives it.

    Why processes: the scan is Python code that holds the interpreter lock,
    so threads cannot spread it over the CPUs, and with ``--remove`` the
    deleting threads of one process wait for that lock after every unlink.
    Each worker is the whole single-process job (scan, and deleting
    threads) on its share. This process is the first worker and forks the
    others before it starts any thread; between two of its own accounts it
    takes in what the others have sent, so no extra process sits waiting.
    """
    children: dict[int, int] = {}  # read end of its pipe -> pid
    try:
        for index in range(1, jobs):
            read_end, write_end = os.pipe()
            reporter.out.flush()
            reporter.err.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child; its effects are what the tests see
                os.close(read_end)
                for other in children:
                    os.close(other)
                _worker(config, cutoffs, remove, reporter, progress_every, (index, jobs), write_end)
            os.close(write_end)
            os.set_blocking(read_end, False)
            children[read_end] = pid
        collector = _Collector(children, reporter, progress_every)
        own = _run_here(config, cutoffs, remove=remove, reporter=reporter, share=(0, jobs),
                        tick=collector.own_account)
        return collector.finish(own)
    finally:
        for read_end, pid in children.items():
            with contextlib.suppress(OSError):
                os.close(read_end)
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGTERM)  # this process failed: do not leave workers behind
                    os.waitpid(pid, 0)


def _worker(
    config: Config,
    cutoffs: Cutoffs,
    remove: bool,
    parent_reporter: Reporter,
    progress_every: int,
    share: tuple[int, int],
    write_end: int,
) -> NoReturn:  # pragma: no cover - runs in the child
    """One forked worker: the job on its share, output into the pipe; never returns."""
    code = 1
    try:
        with open(write_end, "w", encoding="utf-8", errors="surrogateescape", buffering=1 << 16) as out:
            reporter = Reporter(verbose=parent_reporter.verbose, dry_run=parent_reporter.dry_run,
                                out=out, err=out)
            # Flush often enough that the progress lines come in time.
            flush_every = max(1, progress_every // (2 * share[1]))

            def tick(stats: ExpireStats) -> None:
                out.write(f"\0p {stats.accounts_removed} {stats.files_removed}\n")
                if stats.accounts_scanned % flush_every == 0:
                    out.flush()

            stats = _run_here(config, cutoffs, remove=remove, reporter=reporter, share=share,
                              tick=tick if progress_every else None)
            out.write("\0s " + " ".join(str(getattr(stats, name)) for name in _STATS_FIELDS) + "\n")
        code = 0
    except BaseException:
        log.exception("expire worker %d of %d failed", share[0] + 1, share[1])
    finally:
        os._exit(code)


class _Collector:
    """Takes in the forked workers' output: copies their lines, sums their counts, prints progress."""

    def __init__(self, children: dict[int, int], reporter: Reporter, progress_every: int) -> None:
        import selectors

        self.children = children
        self.reporter = reporter
        self.progress_every = progress_every
        self.started = time.monotonic()
        self.total = ExpireStats()
        self.scanned = 0
        self.latest: dict[int, tuple[int, int]] = {-1: (0, 0)}  # inactive, files removed; -1 is this one
        self.latest.update((fd, (0, 0)) for fd in children)
        self.finished: set[int] = set()
        self.partial = {fd: b"" for fd in children}
        self.selector = selectors.DefaultSelector()
        for fd in children:
            self.selector.register(fd, selectors.EVENT_READ)

    def own_account(self, stats: ExpireStats) -> None:
        """This process has done one more account: count it, and take in what has come."""
        self.latest[-1] = (stats.accounts_removed, stats.files_removed)
        self._one_more()
        if self.selector.get_map():
            self._take_in(timeout=0)

    def finish(self, own: ExpireStats) -> ExpireStats:
        """Take in the rest, wait for the workers; all counts summed (raises :class:`WorkerFailed`)."""
        with self.selector:
            while self.selector.get_map():
                self._take_in(timeout=None)
        failures = []
        for fd, pid in self.children.items():
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code or fd not in self.finished:
                how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                failures.append(f"worker {pid} ({how})")
        if failures:
            raise WorkerFailed("the run is incomplete: " + ", ".join(failures) + " failed")
        for name in _STATS_FIELDS:
            setattr(self.total, name, getattr(self.total, name) + getattr(own, name))
        return self.total

    def _one_more(self) -> None:
        self.scanned += 1
        if self.progress_every and self.scanned % self.progress_every == 0:
            self.reporter.progress(
                f"expire: {self.scanned} accounts scanned, "
                f"{sum(i for i, _ in self.latest.values())} inactive, "
                f"{sum(f for _, f in self.latest.values())} files removed, "
                f"{time.monotonic() - self.started:.1f}s"
            )

    def _take_in(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            fd = key.fd
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                self.selector.unregister(fd)
                continue
            *lines, self.partial[fd] = (self.partial[fd] + data).split(b"\n")
            text = []
            for line in lines:
                if not line.startswith(b"\0"):
                    text.append(line.decode("utf-8", "surrogateescape") + "\n")
                elif line.startswith(b"\0p "):
                    inactive, files = line[3:].split()
                    self.latest[fd] = (int(inactive), int(files))
                    self._one_more()
                elif line.startswith(b"\0s "):
                    for name, value in zip(_STATS_FIELDS, line[3:].split(), strict=True):
                        setattr(self.total, name, getattr(self.total, name) + int(value))
                    self.finished.add(fd)
            if text:
                self.reporter.out.write("".join(text))


def format_summary(stats: ExpireStats, *, remove: bool, seconds: float) -> str:
    """The closing line(s): what went, out of how much, and how long it took."""
    verb = "Removed" if remove else "Would remove"
    kept = stats.accounts_scanned - stats.accounts_removed
    lines = [
        (
            f"{verb} {stats.accounts_removed} out of {stats.accounts_scanned} accounts "
            f"({stats.account_files_removed} files, {stats.account_bytes_removed} bytes) "
            f"and {stats.files_removed} out of {stats.files_scanned} files "
            f"({stats.bytes_removed} bytes, {stats.quota_files_removed} of them to meet the quota) "
            f"in {kept} remaining accounts, in {seconds:.2f} seconds"
        ),
    ]
    if stats.empty_dirs_removed or stats.nonempty_dirs_skipped:
        lines.append(
            f"{verb} {stats.empty_dirs_removed} empty directories without a password; "
            f"skipped {stats.nonempty_dirs_skipped} that were not empty"
        )
    if not remove:
        lines.append("Dry run: nothing was deleted. Run again with --remove to delete.")
    return "\n".join(lines)


def _job_count(text: str) -> int:
    """argparse type of ``--jobs``: a whole number >= 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def main(argv: list[str] | None = None, *, now: float | None = None) -> int:
    """Entry point of ``chatmail-expire``; ``now`` (Unix time) is for tests."""
    parser = argparse.ArgumentParser(
        prog="chatmail-expire",
        description="Delete old messages, trim mailboxes to 70% of their quota and remove "
        "accounts that have not logged in for delete_inactive_users_after days, as set in "
        "chatmail.ini. Without --remove nothing is deleted: the accounts and (with -v) "
        "files that would go are listed.",
    )
    add_config_argument(parser, optional=True)
    parser.add_argument("--remove", action="store_true", help="really delete (default: dry run)")
    parser.add_argument(
        "--days",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="pretend that now is N days earlier (to preview a later run's effect, use a smaller "
        "retention in CONFIG instead)",
    )
    parser.add_argument(
        "--maxnum",
        type=non_negative_int,
        metavar="N",
        help="stop after N accounts (to try the job on part of a large relay)",
    )
    parser.add_argument(
        "--progress-every",
        type=non_negative_int,
        default=DEFAULT_PROGRESS_EVERY,
        metavar="N",
        help=f"print progress to stderr every N accounts, 0 for never (default: {DEFAULT_PROGRESS_EVERY})",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=_job_count,
        default=default_jobs(),
        metavar="N",
        help="share the accounts out among N worker processes (default: the number of usable "
        f"CPUs, at most {MAX_JOBS}; here {default_jobs()}); with more than one the listed lines "
        "come in no fixed order. --maxnum always runs in one process",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every file deleted")
    args = parser.parse_args(argv)
    setup_logging(False)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        parser.error(str(exc))

    current = time.time() if now is None else now
    current -= args.days * SECONDS_PER_DAY
    reporter = Reporter(verbose=args.verbose, dry_run=not args.remove, out=sys.stdout, err=sys.stderr)
    started = time.monotonic()
    try:
        stats = run_expire(
            config,
            now=current,
            remove=args.remove,
            reporter=reporter,
            maxnum=args.maxnum,
            progress_every=args.progress_every,
            jobs=args.jobs,
        )
    except WorkerFailed as exc:
        sys.stdout.flush()
        print(f"chatmail-expire: FAILED, {exc}", file=sys.stderr)
        return 1
    print(format_summary(stats, remove=args.remove, seconds=time.monotonic() - started))
    if args.remove:
        count_removals(config, stats)
    return 0


def count_removals(config: Config, stats: ExpireStats, now: float | None = None) -> None:
    """Add what a run removed to the expiry's counters (``expire`` in ``metrics_dir``).

    A failure to count is logged: the removals happened, and the job did its work.
    """
    from . import metrics

    counters = metrics.Counters.for_source(config.metrics_dir, "expire", write_behind=False)
    name = "chatmail_expired_messages_total"
    counters.inc(name, stats.files_removed - stats.quota_files_removed, reason="retention")
    counters.inc(name, stats.quota_files_removed, reason="quota")
    counters.inc("chatmail_expired_accounts_total", stats.accounts_removed)
    counters.inc("chatmail_expired_bytes_total", stats.bytes_removed + stats.account_bytes_removed)
    counters.set("chatmail_expire_last_run_timestamp_seconds", time.time() if now is None else now)
    try:
        counters.add_to_file()
    except (OSError, TimeoutError) as exc:
        log.warning("cannot add the removals to the metrics in %s: %s", config.metrics_dir, exc)


# --- the quota-warning hook ----------------------------------------------


def quota_main(argv: list[str] | None = None, *, now: float | None = None) -> int:
    """Entry point of ``chatmail-quota-expire``, run by Dovecot's quota_warning."""
    parser = argparse.ArgumentParser(
        prog="chatmail-quota-expire",
        description="Delete a mailbox's oldest messages (none younger than a day) until the "
        "messages in cur/ and new/ add up to at most TARGET_MB megabytes. Dovecot runs this "
        "when a mailbox crosses 75% of its quota, with 70% of the quota as the target.",
    )
    parser.add_argument(
        "target_mb",
        type=non_negative_int,
        metavar="TARGET_MB",
        help="size in MiB to trim the mailbox to, e.g. 350 for a 500M quota",
    )
    parser.add_argument(
        "mailbox", type=Path, metavar="MAILBOX", help="the account's directory, <mailboxes_dir>/<address>"
    )
    args = parser.parse_args(argv)
    if not args.mailbox.is_dir():
        print(f"quota-expire: no mailbox directory at {args.mailbox}", file=sys.stderr)
        return 1
    removed = expire_to_target(args.mailbox, args.target_mb * MIB, now=now)
    if removed.files:
        _forget_quota(os.fspath(args.mailbox))
        print(
            f"quota-expire: removed {removed.files} message(s) from {args.mailbox.name}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

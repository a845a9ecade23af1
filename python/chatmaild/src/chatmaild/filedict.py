"""A small JSON document on disk that several processes may update.

Per-account state (device tokens) lives next to the mailbox as a JSON file
rather than in a database, so that moving or deleting a mailbox directory
moves or deletes everything about the account. Writers take a lock file
next to it (``<name>.lock``) and read, modify and write under that lock, so
two updates never lose each other; the new content is written to a
temporary file and renamed over the old one, so readers (who take no lock)
and a crash in the middle only ever see a complete file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 10.0


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` so that no reader sees a partial file.

    The temporary name is random, so concurrent writers without a lock
    never write into each other's file; the last rename wins. Files are
    created private (0600): they hold device tokens and queue items.
    ``fsync`` also survives a power loss, not only a crash of the process.
    """
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
            if fsync:
                fp.flush()
                os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FileDict:
    """A JSON object stored in ``path``, modified under ``<path>.lock``."""

    def __init__(self, path: str | Path, lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f"{self.path.name}.lock")
        self.lock_timeout = lock_timeout

    def read(self) -> dict[str, Any]:
        """Return the stored object; ``{}`` if the file is missing or not a JSON object.

        A damaged file is logged and read as empty rather than raised: the
        state kept here can be rebuilt (clients register their tokens again),
        while an exception would block every later update of the account.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("corrupt JSON in %s, reading it as empty", self.path)
            return {}
        if not isinstance(data, dict):
            log.warning("%s holds no JSON object, reading it as empty", self.path)
            return {}
        return data

    @contextlib.contextmanager
    def modify(self) -> Iterator[dict[str, Any]]:
        """Yield the stored object under the lock and write it back afterwards.

        If the body raises, nothing is written. Raises
        :class:`filelock.Timeout` if another writer holds the lock too long.
        """
        # Imported here: write_bytes_atomic is used by daemons that never lock (metrics in
        # doveauth), and filelock costs each of them 1.5 MB of idle memory.
        from filelock import FileLock

        with FileLock(self.lock_path, timeout=self.lock_timeout):
            data = self.read()
            yield data
            write_bytes_atomic(self.path, json.dumps(data).encode("utf-8"))

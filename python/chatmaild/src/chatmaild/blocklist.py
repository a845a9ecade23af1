"""Addresses that may not log in, and may not be created again.

A chatmail account is created by its first login, so deleting an abusive
account is not enough: the next login with any password would create it
anew. ``chatmail accounts block`` therefore writes the address into this
list, and doveauth refuses every login of a listed address before it looks
for or creates the account.

The list is a text file (``blocklist_file`` in chatmail.ini), one address
per line, ``#`` starts a comment, so an operator can read and edit it with
any tool. doveauth reads it on each login but only re-parses it when the
file changed, so a busy relay pays one ``stat`` per login.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_TIMEOUT_SECONDS = 10.0
FILE_MODE = 0o644
"""World-readable: doveauth runs as the mail user, the admin command as root."""


def normalize(addr: str) -> str:
    """Addresses are compared as doveauth sees them: without spaces, in lower case."""
    return addr.strip().lower()


def parse(text: str) -> frozenset[str]:
    """The addresses of a blocklist file's text."""
    entries = set()
    for line in text.splitlines():
        entry = normalize(line.partition("#")[0])
        if entry:
            entries.add(entry)
    return frozenset(entries)


class Blocklist:
    """The blocklist file, read again only when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: frozenset[str] = frozenset()

    def entries(self) -> frozenset[str]:
        """All blocked addresses; empty if the file does not exist.

        Raises OSError if the file exists but cannot be read: the caller
        decides whether that should stop a login.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._entries = None, frozenset()
            return self._entries
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._entries = parse(self.path.read_text(encoding="utf-8"))
            self._stamp = stamp
        return self._entries

    def contains(self, addr: str) -> bool:
        """Whether ``addr`` is blocked (OSError if the list cannot be read)."""
        return normalize(addr) in self.entries()

    def add(self, addr: str) -> bool:
        """Block ``addr``; False if it already was."""
        return self._change(normalize(addr), add=True)

    def remove(self, addr: str) -> bool:
        """Unblock ``addr``; False if it was not blocked."""
        return self._change(normalize(addr), add=False)

    def _change(self, addr: str, *, add: bool) -> bool:
        """Rewrite the file under a lock, keeping every other line as it was."""
        from filelock import FileLock  # only changing the list locks; doveauth only reads it

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS):
            try:
                lines = self.path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                lines = []
            present = addr in parse("\n".join(lines))
            if present == add:
                return False
            if add:
                lines.append(addr)
            else:
                lines = [line for line in lines if normalize(line.partition("#")[0]) != addr]
            self._write(lines)
        return True

    def _write(self, lines: list[str]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fp:
                fp.write("".join(line + "\n" for line in lines))
                fp.flush()
                os.fsync(fp.fileno())
            os.chmod(tmp, FILE_MODE)  # the umask may have taken bits away
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

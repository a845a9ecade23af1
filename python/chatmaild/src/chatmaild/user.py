"""One account on disk: ``<mailboxes_dir>/<addr>/``.

The account "database" is the file system, in the same layout as upstream
chatmail relays (so a relay can be migrated by copying the mail directory):
the account exists when its ``password`` file is non-empty, and the marker
file ``enforceE2EEincoming`` says that cleartext mail to it is refused.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

PASSWORD_FILE = "password"
ENFORCE_E2EE_FILE = "enforceE2EEincoming"


class User:
    """Paths and the few file operations of one mailbox."""

    def __init__(self, maildir: Path, addr: str) -> None:
        self.maildir = Path(maildir)
        self.addr = addr
        self.password_path = self.maildir / PASSWORD_FILE
        self.enforce_E2EE_path = self.maildir / ENFORCE_E2EE_FILE

    def __repr__(self) -> str:
        return f"<User {self.addr}>"

    def get_password_hash(self) -> str | None:
        """Return the stored hash (``{SHA512-CRYPT}$6$...``), or None if there is no account.

        An empty file counts as "no account": that is how an operator blocks
        a user, and it is logged because it may also mean a crashed write.
        """
        try:
            text = self.password_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not text:
            log.error("empty password file, treating as no account: %s", self.password_path)
            return None
        return text

    def exists(self) -> bool:
        """Tell whether the account has a usable password."""
        return self.get_password_hash() is not None

    def set_password(self, password_hash: str) -> None:
        """Store ``password_hash`` atomically and mark the account as encryption-only.

        Written to a temporary file and renamed over ``password`` so that a
        concurrent reader or a crash never sees half a hash. The marker comes
        first: an account never exists, not even for a moment or after a
        crash, without it.
        """
        self.maildir.mkdir(parents=True, exist_ok=True)
        self.enforce_E2EE_path.touch()
        tmp = self._write_temporary(password_hash)
        try:
            os.replace(tmp, self.password_path)
        except OSError:
            log.exception("cannot write password file of %s", self.addr)
            tmp.unlink(missing_ok=True)
            raise

    def create(self, password_hash: str) -> tuple[bool, str | None]:
        """Create the account with ``password_hash`` unless its ``password`` file exists.

        Returns whether this call created it, and the hash the account now
        has: ``password_hash``, or what the existing file holds (None for an
        empty file: an operator's block, which a login must not undo).

        The file is written under a temporary name and hard-linked to
        ``password``: the link either makes the complete file appear at once
        or fails because the name exists, so concurrent first logins, in this
        process or another, need no lock, and exactly one of them creates the
        account. The encryption marker is made before the account exists.
        """
        try:
            os.mkdir(self.maildir)
        except FileExistsError:
            pass
        except FileNotFoundError:
            self.maildir.mkdir(parents=True, exist_ok=True)
        self.enforce_E2EE_path.touch()
        tmp = self._write_temporary(password_hash)
        try:
            os.link(tmp, self.password_path)
        except FileExistsError:
            return False, self.get_password_hash()
        except OSError:
            log.exception("cannot write password file of %s", self.addr)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return True, password_hash

    def _write_temporary(self, content: str) -> Path:
        """``content`` in a new private file next to ``password``; its path."""
        tmp = self.password_path.with_name(f"{PASSWORD_FILE}.tmp-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fp:
                fp.write(content)
        except OSError:
            log.exception("cannot write password file of %s", self.addr)
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def is_incoming_cleartext_ok(self) -> bool:
        """Cleartext mail may be delivered only while the marker file is absent."""
        return not self.enforce_E2EE_path.exists()

    def allow_incoming_cleartext(self) -> None:
        """Remove the marker (an operator's exception for a legacy account)."""
        self.enforce_E2EE_path.unlink(missing_ok=True)

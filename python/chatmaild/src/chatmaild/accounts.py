"""The operator's view of accounts: list, delete, block.

Accounts live in the file system (see :mod:`chatmaild.user`), so these are
file operations on ``mailboxes_dir``. Deleting removes the whole account
directory: password, mail, metadata and Dovecot's indexes. Blocking also
puts the address on the blocklist that doveauth honours
(:mod:`chatmaild.blocklist`), so the address cannot be created again by its
next login.

Each change is logged with the address and what was done, never with the
password hash or anything of the mail.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .blocklist import Blocklist, normalize
from .config import Config
from .expire import iter_mailbox_files, iter_mailboxes, remove_tree
from .user import PASSWORD_FILE

log = logging.getLogger(__name__)


class AccountError(Exception):
    """An address that is not an account of this relay, or cannot be changed."""


@dataclasses.dataclass(frozen=True)
class AccountInfo:
    """One account as the listing shows it."""

    addr: str
    last_login: float
    """The password file's mtime: the day of the last login (the login tracker keeps day precision)."""
    mail_bytes: int
    """Bytes of messages (files in ``cur``, ``new`` and ``tmp``); indexes and metadata not counted."""


def iter_accounts(mailboxes_dir: Path, *, sizes: bool = True) -> Iterator[AccountInfo]:
    """Yield every account (a directory with a password file), sorted by address.

    ``sizes=False`` skips walking the mail, for counting.
    """
    entries = sorted(iter_mailboxes(mailboxes_dir), key=lambda entry: entry.name)
    for entry in entries:
        try:
            last_login = os.stat(os.path.join(entry.path, PASSWORD_FILE)).st_mtime
        except OSError:
            continue
        mail = 0
        if sizes:
            mail = sum(info.size for info in iter_mailbox_files(entry.path) if info.is_message)
        yield AccountInfo(entry.name, last_login, mail)


def count_accounts(mailboxes_dir: Path) -> int:
    """How many accounts exist."""
    return sum(1 for _ in iter_accounts(mailboxes_dir, sizes=False))


def account_dir(config: Config, addr: str) -> Path:
    """The directory of ``addr``, after checking it is an address of this relay."""
    addr = normalize(addr)
    if not addr.endswith("@" + config.mail_domain):
        raise AccountError(f"{addr!r} is not an address of this relay (@{config.mail_domain})")
    try:
        return config.get_user(addr).maildir
    except ValueError as exc:
        raise AccountError(str(exc)) from None


def delete_account(config: Config, addr: str) -> int:
    """Remove the account and all its data; return the number of files removed.

    A client still connected may keep a session until it reconnects; it
    cannot log in again (without the password file a login creates a new,
    empty account, unless the address is blocked).
    """
    path = account_dir(config, addr)
    if not path.is_dir():
        raise AccountError(f"no account {normalize(addr)}")
    removed = remove_tree(str(path), remove=True)
    if path.exists():
        raise AccountError(f"{normalize(addr)}: some files could not be removed, see the log")
    log.info("deleted account %s (%d files)", normalize(addr), removed.files)
    return removed.files


def block_account(config: Config, addr: str) -> tuple[bool, int]:
    """Put ``addr`` on the blocklist, then delete its account if it has one.

    Blocked first, so no login can re-create it in between. Returns whether
    it was newly blocked and how many files were removed.
    """
    path = account_dir(config, addr)
    newly = Blocklist(config.blocklist_file).add(addr)
    if newly:
        log.info("blocked address %s", normalize(addr))
    files = delete_account(config, addr) if path.is_dir() else 0
    return newly, files


def unblock_account(config: Config, addr: str) -> bool:
    """Take ``addr`` off the blocklist (a later login creates a new, empty account)."""
    account_dir(config, addr)
    removed = Blocklist(config.blocklist_file).remove(addr)
    if removed:
        log.info("unblocked address %s", normalize(addr))
    return removed

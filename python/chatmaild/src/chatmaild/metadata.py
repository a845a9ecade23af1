"""chatmail-metadata: IMAP METADATA for Delta Chat, and push notifications.

Dovecot keeps mailbox and server attributes (RFC 5464) in a dict; pointing
that dict at this service lets a chatmail relay

* store device tokens: a client sets ``/private/devicetoken`` on INBOX,
  which Dovecot passes on as ``priv/<mailbox guid>/devicetoken``;
* send pushes: on each delivery the LMTP Lua hook sets
  ``/private/messagenew``, and every valid token of the account is queued
  for the notification proxy (see :mod:`chatmaild.notifier`);
* tell clients what the relay offers, as server attributes
  ``/shared/vendor/deltachat/<name>``: its iroh relay, TURN credentials and
  the recipient limit per message.

Keys are matched on their last components, not on exact prefixes: Dovecot
inserts the mailbox GUID and, for server attributes, its own
``vendor/vendor.dovecot/pvt/server/`` path, and these details have changed
between Dovecot versions.

Tokens are stored in ``<mailboxes_dir>/<addr>/metadata.json`` as
``{"devicetoken": {"<token>": <last registration time>}}`` and forgotten
after 90 days without a new registration, so devices that stopped using
the account stop costing requests. An account keeps at most
MAX_TOKENS_PER_ACCOUNT tokens (a new registration beyond that forgets the
longest-unrefreshed one, as a reinstalled app leaves its old token
behind), and a token larger than MAX_TOKEN_BYTES is refused: every token
costs one request to the notification proxy per delivered message.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import appversions, metrics
from .cli import add_exit_when_idle_argument, add_socket_arguments, parse_args_and_config, run_daemon
from .config import Config
from .dictproxy import DictProxy, SetRefused
from .filedict import FileDict
from .logsetup import add_verbose_flag
from .notifier import Notifier
from .turn import TurnCredentials

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
QUEUE_DIR = "pending_notifications"
TOKEN_KEY = "devicetoken"
TOKEN_VALIDITY_SECONDS = 90 * 86400
CLOCK_SKEW_SECONDS = 60
MAX_TOKENS_PER_ACCOUNT = 20
"""Devices per account that get pushes; the least recently registered go first."""
MAX_TOKEN_BYTES = 4096
"""Delta Chat's tokens (encrypted to the proxy) are well under 1 kB."""
MAX_SMTP_RECIPIENTS = "1000"
"""Postfix's default ``smtpd_recipient_limit``, which the relay keeps."""


def valid_tokens(stored: Any, now: float) -> dict[str, int]:
    """Return the tokens of ``stored`` that are still valid, oldest registration first.

    ``stored`` is the ``devicetoken`` value as found on disk: the current
    mapping token -> registration time, or the list of tokens that older
    relays wrote (each then counts as registered ``now``). Timestamps in
    the future beyond a small clock skew are not trusted and dropped.
    """
    if isinstance(stored, list):
        return {token: int(now) for token in stored if isinstance(token, str) and token}
    if not isinstance(stored, dict):
        return {}
    return {
        token: ts
        for token, ts in stored.items()
        if isinstance(ts, int) and now - TOKEN_VALIDITY_SECONDS < ts < now + CLOCK_SKEW_SECONDS
    }


def newest_tokens(tokens: dict[str, int], limit: int = MAX_TOKENS_PER_ACCOUNT) -> dict[str, int]:
    """At most ``limit`` tokens: those registered or refreshed last, in their stored order.

    Among equal times the later-stored token wins, so a new registration always gets in.
    """
    if len(tokens) <= limit:
        return tokens
    ranked = sorted(enumerate(tokens.items()), key=lambda item: (item[1][1], item[0]))
    keep = {token for _, (token, _) in ranked[-limit:]}
    return {token: ts for token, ts in tokens.items() if token in keep}


class Metadata:
    """Device tokens of the accounts under ``mailboxes_dir``."""

    def __init__(self, mailboxes_dir: Path, now: Callable[[], float] = time.time) -> None:
        self.mailboxes_dir = Path(mailboxes_dir)
        self.now = now

    def _filedict(self, addr: str) -> FileDict:
        if not addr or "@" not in addr or "/" in addr or addr.startswith("."):
            raise ValueError(f"invalid address for a mailbox: {addr!r}")
        return FileDict(self.mailboxes_dir / addr / METADATA_FILE)

    def add_token(self, addr: str, token: str) -> bool:
        """Register ``token`` for ``addr`` or refresh its time; False if there is no mailbox.

        A refreshed token keeps its place, so tokens stay in the order they
        were first registered.
        """
        filedict = self._filedict(addr)
        if not filedict.path.parent.is_dir():
            return False
        if len(token.encode("utf-8", "surrogateescape")) > MAX_TOKEN_BYTES:
            raise SetRefused(f"METADATA device token larger than {MAX_TOKEN_BYTES} bytes refused")
        with filedict.modify() as data:
            tokens = valid_tokens(data.get(TOKEN_KEY), self.now())
            tokens[token] = int(self.now())
            data[TOKEN_KEY] = newest_tokens(tokens)
        return True

    def remove_token(self, addr: str, token: str) -> None:
        """Forget ``token`` of ``addr``; nothing happens if it is not stored."""
        filedict = self._filedict(addr)
        if not filedict.path.exists():
            return
        with filedict.modify() as data:
            tokens = valid_tokens(data.get(TOKEN_KEY), self.now())
            tokens.pop(token, None)
            data[TOKEN_KEY] = tokens

    def get_tokens(self, addr: str) -> list[str]:
        """Return the valid tokens of ``addr``.

        If the file holds expired tokens or the legacy list format, it is
        rewritten: otherwise a legacy account would never get its tokens
        converted, and expired ones would linger until the next registration.
        """
        filedict = self._filedict(addr)
        stored = filedict.read().get(TOKEN_KEY)
        now = self.now()
        tokens = newest_tokens(valid_tokens(stored, now))
        if stored is not None and tokens != stored:
            with filedict.modify() as data:
                tokens = newest_tokens(valid_tokens(data.get(TOKEN_KEY), now))
                data[TOKEN_KEY] = tokens
        return list(tokens)


def split_key(key: str) -> tuple[str, str] | None:
    """Classify a dict key as ``("priv", name)`` or ``("deltachat", name)``; None otherwise.

    ``priv/<guid>/devicetoken`` -> ``("priv", "devicetoken")``;
    ``shared/.../vendor/deltachat/turn`` -> ``("deltachat", "turn")``.
    """
    parts = key.split("/")
    if len(parts) >= 2 and parts[0] == "priv":
        return "priv", parts[-1]
    if len(parts) >= 4 and parts[0] == "shared" and parts[-3:-1] == ["vendor", "deltachat"]:
        return "deltachat", parts[-1]
    return None


class MetadataDictProxy(DictProxy):
    """The dict behind Dovecot's ``mail_attribute``."""

    def __init__(
        self,
        config: Config,
        metadata: Metadata,
        notifier: Notifier,
        turn: TurnCredentials | None = None,
    ) -> None:
        self.config = config
        self.metadata = metadata
        self.notifier = notifier
        if turn is None and config.turn_secret_file is not None:
            turn = TurnCredentials(config.turn_secret_file)
        self.turn = turn
        self.appversions = appversions.load(config.appversions_file)

    def busy(self) -> bool:
        """A pending push notification keeps the daemon up as much as an open connection."""
        return super().busy() or self.notifier.pending

    async def handle_lookup(self, key: str, user: str) -> str | None:
        match split_key(key):
            case ("priv", "devicetoken"):
                if not user:
                    log.debug("device token lookup without a user")
                    return None
                try:
                    return " ".join(self.metadata.get_tokens(user))
                except ValueError as exc:
                    log.warning("device token lookup refused: %s", exc)
                    return None
            case ("deltachat", "irohrelay"):
                return self.config.iroh_relay or None
            case ("deltachat", "turn"):
                if self.turn is None:
                    return None
                credentials = self.turn.create()
                if credentials is None:
                    return None
                username, password = credentials
                return f"{self.config.mail_domain}:{self.config.turn_port}:{username}:{password}"
            case ("deltachat", "maxsmtprecipients"):
                return MAX_SMTP_RECIPIENTS
            case ("deltachat", "appversions"):
                return self.appversions
        log.debug("lookup of unknown metadata key %s", key)
        return None

    async def handle_set(self, user: str, key: str, value: str) -> bool:
        try:
            return await self._handle_set(user, key, value)
        except ValueError as exc:  # an impossible user name from the dict client
            log.warning("metadata set of %s refused: %s", key, exc)
            return False

    async def _handle_set(self, user: str, key: str, value: str) -> bool:
        match split_key(key):
            case ("priv", "devicetoken"):
                if not value:
                    log.debug("empty device token of %s ignored", user)
                    return True
                if not self.metadata.add_token(user, value):
                    log.warning("device token for %s refused: no such mailbox", user)
                    return False
                log.debug("device token of %s registered", user)
                return True
            case ("priv", "messagenew"):
                tokens = self.metadata.get_tokens(user)
                for token in tokens:
                    self.notifier.enqueue(user, token)
                log.debug("%s notification(s) queued for %s", len(tokens), user)
                return True
        log.debug("set of unknown metadata key %s refused", key)
        return False


async def serve(config: Config, socket_path: Path, exit_when_idle: float | None = None) -> None:
    """Resume queued notifications and serve the metadata dict until cancelled (or idle,
    see :meth:`DictProxy.serve_forever`)."""
    metadata = Metadata(config.mailboxes_dir)
    counters = metrics.Counters.for_source(config.metrics_dir, "metadata")
    notifier = Notifier(
        config.mailboxes_dir / QUEUE_DIR, config.notification_url, metadata.remove_token, counters=counters
    )
    await notifier.start()
    try:
        await MetadataDictProxy(config, metadata, notifier).serve_forever(socket_path, exit_when_idle)
    finally:
        await notifier.stop()
        counters.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``chatmail-metadata`` command."""
    parser = argparse.ArgumentParser(
        prog="chatmail-metadata",
        description="Serve Dovecot's mail_attribute dict for Delta Chat: device tokens, "
        "push notifications, and the relay's iroh, TURN and limit settings.",
    )
    add_socket_arguments(parser, config_key="metadata_socket")
    add_exit_when_idle_argument(parser)
    add_verbose_flag(parser)
    args, config = parse_args_and_config(parser, argv)
    if not config.mailboxes_dir.is_dir():
        log.error("mailboxes_dir %s does not exist; create it before starting", config.mailboxes_dir)
        return 1
    return run_daemon("chatmail-metadata", serve(config, args.socket, args.exit_when_idle))


if __name__ == "__main__":
    raise SystemExit(main())

"""Short-lived TURN credentials for Delta Chat calls.

Clients learn the relay's TURN server from the IMAP metadata key
``/shared/vendor/deltachat/turn``. The credentials follow the "TURN REST"
scheme that coturn accepts with ``use-auth-secret``: the TURN server and
this service share one secret, the username is the Unix time at which the
credentials expire, and the password is ``base64(HMAC-SHA1(secret,
username))``. The TURN server can therefore check a login without asking
anyone, and a leaked pair stops working by itself.

The username is the bare expiry time, with no user id appended (the REST
draft allows ``<expiry>:<id>``): Delta Chat splits the metadata value
``host:port:username:password`` on colons and reads the username as the
expiry, and it keeps the TURN server from linking allocations to accounts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LIFETIME_SECONDS = 5 * 86400


def make_credentials(secret: bytes, expiry: int) -> tuple[str, str]:
    """Return ``(username, password)`` valid until the Unix time ``expiry``."""
    username = str(int(expiry))
    digest = hmac.new(secret, username.encode("ascii"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


class TurnCredentials:
    """Hands out credentials signed with the secret in ``secret_file``.

    The file is read on every request, so a rotated secret takes effect
    without a restart. Surrounding whitespace (a trailing newline) is not
    part of the secret. A missing or empty file is logged once, not on
    every client login.
    """

    def __init__(
        self,
        secret_file: Path,
        lifetime: int = DEFAULT_LIFETIME_SECONDS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.secret_file = Path(secret_file)
        self.lifetime = lifetime
        self.now = now
        self._reported = False

    def _read_secret(self) -> bytes | None:
        try:
            secret = self.secret_file.read_bytes().strip()
        except OSError as exc:
            problem = f"cannot read it: {exc.strerror}"
        else:
            if secret:
                self._reported = False
                return secret
            problem = "it is empty"
        if not self._reported:
            log.error("TURN secret file %s unusable (%s); not offering TURN", self.secret_file, problem)
            self._reported = True
        return None

    def create(self) -> tuple[str, str] | None:
        """Return fresh ``(username, password)``, or None if there is no usable secret."""
        secret = self._read_secret()
        if secret is None:
            return None
        return make_credentials(secret, int(self.now()) + self.lifetime)

"""The app-version index a relay may offer as IMAP server metadata
``/shared/vendor/deltachat/appversions``.

Delta Chat clients read it to tell their users that a newer version exists, and drop the
whole payload if any field has the wrong type, so the file is checked once at start-up
against the schema clients expect, and a bad file is refused with a message naming the
field (the key is then simply not offered) instead of being served broken.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ALLOWED_DOWNLOAD_PREFIXES = ("https://github.com/deltachat/", "https://download.delta.chat/")
MAX_VERSION = 2**32


class AppVersionsError(ValueError):
    """The app-version file does not follow the schema."""


def _exact_keys(obj: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise AppVersionsError(f"{where}: expected an object with exactly {sorted(keys)}, found {found}")
    return obj


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise AppVersionsError(f"{where}: expected a non-empty string, found {value!r}")
    return value


def validate(data: Any) -> None:
    """Raise AppVersionsError naming the first field that breaks the schema."""
    top = _exact_keys(data, {"clients"}, "top level")
    clients = top["clients"]
    if not isinstance(clients, list) or not clients:
        raise AppVersionsError("clients: expected a non-empty list")
    seen_clients: set[str] = set()
    for i, client in enumerate(clients):
        where = f"clients[{i}]"
        _exact_keys(client, {"clientId", "sources"}, where)
        client_id = _text(client["clientId"], f"{where}.clientId")
        if client_id in seen_clients:
            raise AppVersionsError(f"{where}.clientId: {client_id!r} appears twice")
        seen_clients.add(client_id)
        sources = client["sources"]
        if not isinstance(sources, list) or not sources:
            raise AppVersionsError(f"{where}.sources: expected a non-empty list")
        seen_sources: set[str] = set()
        for j, source in enumerate(sources):
            swhere = f"{where}.sources[{j}]"
            _exact_keys(source, {"sourceId", "versionInteger", "versionString", "downloadUrl"}, swhere)
            source_id = _text(source["sourceId"], f"{swhere}.sourceId")
            if source_id in seen_sources:
                raise AppVersionsError(f"{swhere}.sourceId: {source_id!r} appears twice")
            seen_sources.add(source_id)
            version = source["versionInteger"]
            if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < MAX_VERSION:
                raise AppVersionsError(f"{swhere}.versionInteger: expected an integer 0 <= v < 2**32, found {version!r}")
            _text(source["versionString"], f"{swhere}.versionString")
            url = _text(source["downloadUrl"], f"{swhere}.downloadUrl")
            if not url.startswith(ALLOWED_DOWNLOAD_PREFIXES):
                raise AppVersionsError(f"{swhere}.downloadUrl: must start with one of {ALLOWED_DOWNLOAD_PREFIXES}")


def load(path: Path | None) -> str | None:
    """The file's content as compact one-line JSON, or None (no file set, or a bad one: logged)."""
    if path is None or not str(path):
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        validate(data)
    except (OSError, ValueError) as exc:
        log.error("%s: not offering appversions: %s", path, exc)
        return None
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

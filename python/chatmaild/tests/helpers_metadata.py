"""Helpers for the tests of the dict services: short socket paths and raw exchanges.

A unix socket path must fit in about 100 bytes, which pytest's per-test
directories (named after long test names) do not; sockets therefore live in
a short temporary directory of their own.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from chatmaild.dictproxy import DictProxy

T = TypeVar("T")


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A path for a unix socket in a fresh, short directory."""
    directory = Path(tempfile.mkdtemp(prefix="cmd-"))
    try:
        yield directory / "dict.socket"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def exchange(path: Path, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection, close our side, and return everything answered."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def run_with_server(proxy: DictProxy, path: Path, body: Callable[[], Awaitable[T]]) -> T:
    """Serve ``proxy`` on ``path`` while ``body`` runs, in a fresh event loop."""

    async def main() -> T:
        server = await proxy.start(path)
        async with server:
            return await body()

    return asyncio.run(main())

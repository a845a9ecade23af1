"""The dict line protocol, spoken over a real unix socket."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
from collections.abc import Iterable
from pathlib import Path

import helpers_metadata
import pytest
from helpers_metadata import exchange, run_with_server

from chatmaild.dictproxy import DictProxy, tab_escape, tab_unescape

socket_path = helpers_metadata.socket_path


class MemoryDict(DictProxy):
    """A dict service keeping values in memory, refusing keys that start with ``bad/``."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.sets: list[tuple[str, str, str]] = []

    async def handle_lookup(self, key: str, user: str) -> str | None:
        if key == "boom":
            raise RuntimeError("handler bug")
        return self.values.get(key)

    async def handle_iterate(self, path: str, user: str) -> Iterable[tuple[str, str]]:
        return [(k, v) for k, v in sorted(self.values.items()) if k.startswith(path)]

    async def handle_set(self, user: str, key: str, value: str) -> bool:
        self.sets.append((user, key, value))
        if key.startswith("bad/"):
            return False
        self.values[key] = value
        return True


def test_tab_escaping_round_trips_every_special_character():
    text = "a\tb\nc\rd\x01e\0f"
    escaped = tab_escape(text)
    assert "\t" not in escaped and "\n" not in escaped
    assert escaped == "a\x01tb\x01nc\x01rd\x011e\x010f"
    assert tab_unescape(escaped) == text


def test_hello_and_unknown_commands_get_no_reply(socket_path):
    proxy = MemoryDict()
    request = b"H4\t0\t0\t\tmetadata\nU1\tkey\nA1\tkey\t1\nT1\t5\t0\nZ\xff garbage\n\n"
    assert run_with_server(proxy, socket_path, lambda: exchange(socket_path, request)) == b""


def test_lookup_answers_the_value_or_not_found(socket_path):
    proxy = MemoryDict()
    proxy.values["shared/x"] = "value"
    request = b"Lshared/x\tuser@example.org\nLshared/missing\tuser@example.org\nLshared/x\n"
    reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert reply == b"Ovalue\nN\nOvalue\n"


def test_values_with_newlines_are_escaped_in_replies_and_unescaped_in_sets(socket_path):
    proxy = MemoryDict()
    request = b"B1\tu@example.org\nS1\tshared/k\tline1\x01nline2\nC1\nLshared/k\tu@example.org\n"
    reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert proxy.values["shared/k"] == "line1\nline2"
    assert reply == b"O\nOline1\x01nline2\n"


def test_iteration_lists_rows_and_ends_with_an_empty_line(socket_path):
    proxy = MemoryDict()
    proxy.values.update({"shared/a/1": "x", "shared/a/2": "y", "shared/b": "z"})
    request = b"I0\t0\tshared/a/\tuser@example.org\nI0\t0\tnothing/\n"
    reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert reply == b"Oshared/a/1\tx\nOshared/a/2\ty\n\n\n"


def test_commit_fails_if_any_set_of_the_transaction_is_refused(socket_path):
    proxy = MemoryDict()
    request = (
        b"B1\tu@example.org\nS1\tshared/ok\t1\nC1\nB2\tu@example.org\nS2\tshared/ok2\t1\nS2\tbad/key\t1\nC2\n"
    )
    reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert reply == b"O\nF\n"
    assert proxy.sets[0] == ("u@example.org", "shared/ok", "1")


def test_begin_with_the_extra_fields_of_dovecot_2_4_is_accepted(socket_path):
    proxy = MemoryDict()
    request = b"B7\tu@example.org\t0\tfuture-field\nS7\tshared/k\tv\nC7\n"
    reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert reply == b"O\n"
    assert proxy.sets == [("u@example.org", "shared/k", "v")]


def test_transactions_with_the_same_id_on_two_connections_keep_their_own_users(socket_path):
    proxy = MemoryDict()

    async def body() -> None:
        r1, w1 = await asyncio.open_unix_connection(str(socket_path))
        r2, w2 = await asyncio.open_unix_connection(str(socket_path))
        w1.write(b"B1\tfirst@example.org\n")
        w2.write(b"B1\tsecond@example.org\n")
        w1.write(b"S1\tshared/one\t1\nC1\n")
        assert await r1.readline() == b"O\n"
        w2.write(b"S1\tshared/two\t2\nC1\n")
        assert await r2.readline() == b"O\n"
        for writer in (w1, w2):
            writer.close()
            await writer.wait_closed()

    run_with_server(proxy, socket_path, body)
    assert sorted(proxy.sets) == [
        ("first@example.org", "shared/one", "1"),
        ("second@example.org", "shared/two", "2"),
    ]


def test_commit_of_an_unknown_transaction_fails_and_rollback_discards(socket_path):
    proxy = MemoryDict()
    request = b"C9\nB1\tu@example.org\nR1\nC1\nS5\tshared/k\tv\n"
    reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert reply == b"F\nF\n"
    assert proxy.sets == []


def test_last_line_without_newline_is_still_answered(socket_path):
    proxy = MemoryDict()
    request = b"B1\tu@example.org\nS1\tshared/k\tv\nC1"
    assert run_with_server(proxy, socket_path, lambda: exchange(socket_path, request)) == b"O\n"


def test_failing_handler_answers_failure_and_the_connection_goes_on(socket_path, caplog):
    proxy = MemoryDict()
    proxy.values["shared/k"] = "v"
    request = b"Lboom\tu@example.org\nLshared/k\tu@example.org\n"
    with caplog.at_level(logging.ERROR, logger="chatmaild.dictproxy"):
        reply = run_with_server(proxy, socket_path, lambda: exchange(socket_path, request))
    assert reply == b"F\nOv\n"
    assert "lookup of boom failed" in caplog.text


def test_overlong_line_closes_only_that_connection(socket_path, caplog):
    proxy = MemoryDict()
    proxy.values["shared/k"] = "v"

    async def body() -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(b"L" + b"x" * (70 * 1024) + b"\nLshared/k\n")
        first = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        second = await exchange(socket_path, b"Lshared/k\n")
        return first, second

    with caplog.at_level(logging.WARNING, logger="chatmaild.dictproxy"):
        first, second = run_with_server(proxy, socket_path, body)
    assert first == b""
    assert second == b"Ov\n"
    assert "longer than" in caplog.text


def test_stale_socket_is_replaced_and_the_new_one_is_group_accessible_only(socket_path):
    # A crashed run leaves its socket file behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(socket_path))
    assert stat.S_ISSOCK(socket_path.lstat().st_mode)

    async def body() -> None:
        server = await MemoryDict().start(socket_path)
        async with server:
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
            assert await exchange(socket_path, b"Lmissing\n") == b"N\n"

    asyncio.run(body())


def test_a_regular_file_at_the_socket_path_is_not_deleted(tmp_path: Path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        asyncio.run(MemoryDict().start(path))
    assert path.read_text() == "precious"


def test_the_socket_queues_many_simultaneous_connects(socket_path):
    """200 Dovecot processes connecting at once must not get resets (asyncio's default backlog is 100)."""
    import socket

    wanted = 300

    async def main() -> int:
        server = await MemoryDict().start(socket_path)
        accepted = 0
        sockets = []
        try:
            # The loop does not run in between, so nothing is accepted: only the backlog holds them.
            for _ in range(wanted):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                sockets.append(sock)
                try:
                    sock.connect(str(socket_path))
                except BlockingIOError:
                    break
                accepted += 1
        finally:
            for sock in sockets:
                sock.close()
            server.close()
        return accepted

    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert asyncio.run(main()) == min(wanted, somaxconn + 1)


# A dict service in a child process, as systemd starts it: the listening socket is fd 3.
SOCKET_ACTIVATED_CHILD = """
import asyncio, sys
from chatmaild.dictproxy import DictProxy

class Echo(DictProxy):
    async def handle_lookup(self, key, user):
        return "value-of-" + key

asyncio.run(Echo().serve_forever(sys.argv[1]))
"""


def spawn_socket_activated(listener: socket.socket, path: Path) -> "subprocess.Popen[bytes]":
    """Start the child the way systemd does: fd 3 is the socket, LISTEN_PID its own pid."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    # What systemd does between fork and exec: the socket onto fd 3, LISTEN_PID = own pid.
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1])); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2], sys.argv[3]])"
    )
    env = {**os.environ, "PYTHONPATH": src, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", launcher, str(listener.fileno()), SOCKET_ACTIVATED_CHILD, str(path)],
        pass_fds=(listener.fileno(),),
        env=env,
    )


def test_a_socket_passed_by_systemd_keeps_connections_waiting_while_the_service_restarts(socket_path):
    """chatmail-metadata is socket-activated: a delivery's request made while the daemon is
    down (killed, restarting) is answered by the next process instead of being refused."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(16)
    inode = socket_path.stat().st_ino

    def lookup(sock: socket.socket, key: str) -> bytes:
        sock.sendall(f"L{key}\tuser\n".encode())
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(100)
            assert chunk, "closed without an answer"
            answer += chunk
        return answer

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(str(socket_path))
        return sock

    first = spawn_socket_activated(listener, socket_path)
    try:
        with connect() as sock:
            assert lookup(sock, "a") == b"Ovalue-of-a\n"
    finally:
        first.kill()
        first.wait()
    # Nobody serves the socket now; the connection still succeeds and waits in the backlog.
    waiting = connect()
    waiting.sendall(b"Lb\tuser\n")
    second = spawn_socket_activated(listener, socket_path)
    try:
        with waiting:
            answer = b""
            while not answer.endswith(b"\n"):
                answer += waiting.recv(100)
        assert answer == b"Ovalue-of-b\n"
        assert socket_path.stat().st_ino == inode, "the daemon serves systemd's socket, it does not bind anew"
    finally:
        second.kill()
        second.wait()
        listener.close()


def test_listen_variables_meant_for_another_process_are_ignored(socket_path):
    from chatmaild.dictproxy import inherited_socket

    assert inherited_socket(socket_path, {}) is None
    assert inherited_socket(socket_path, {"LISTEN_PID": "1", "LISTEN_FDS": "1"}) is None
    assert inherited_socket(socket_path, {"LISTEN_PID": "²", "LISTEN_FDS": "1"}) is None


def test_without_a_passed_socket_the_service_binds_its_own(socket_path, monkeypatch):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)

    async def body() -> bytes:
        server = await MemoryDict().start(socket_path)
        async with server:
            return await exchange(socket_path, b"Lmissing\n")

    assert asyncio.run(body()) == b"N\n"

"""Daemons started on demand by systemd (socket activation) that leave when idle.

Each test starts the real daemon the way systemd does: the listening socket
is file descriptor 3 and LISTEN_PID/LISTEN_FDS name it. The test process
keeps its own copy of the listening socket, as systemd does, so a connection
made after the daemon left waits in the backlog for the next start.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import helpers_metadata
import pytest

from chatmaild import activation

socket_path = helpers_metadata.socket_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
IDLE = 0.5
"""The idle window the tests give (the units give minutes)."""
EXIT_TIMEOUT = 20.0
"""Generous: the test machine is shared and busy."""

# What systemd does between fork and exec: the socket onto fd 3, LISTEN_PID = own pid.
LAUNCHER = (
    "import os, sys; fd = int(sys.argv[1])\nif fd != 3: os.dup2(fd, 3); os.close(fd)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
    "os.execv(sys.executable, [sys.executable, '-m', *sys.argv[2:]])"
)


def start_activated(listener: socket.socket, *argv: str) -> subprocess.Popen[bytes]:
    """Run ``python -m argv...`` with ``listener`` passed as systemd passes it."""
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(listener.fileno()), *argv],
        pass_fds=(listener.fileno(),),
        env=env,
        stderr=subprocess.PIPE,
    )


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def dict_request(path: Path, request: bytes, replies: int) -> bytes:
    """Send one request on a new connection and read ``replies`` lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(EXIT_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(request)
        answer = b""
        while answer.count(b"\n") < replies:
            chunk = sock.recv(4096)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
        return answer


def finished(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Wait for the daemon to leave by itself; its exit status and log."""
    try:
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the daemon did not leave when idle:\n{err.decode()}")
    return proc.returncode, err.decode()


def lastlogin_argv(config, socket_path: Path, idle: float = IDLE) -> tuple[str, ...]:
    return ("chatmaild.lastlogin", str(config.path), "--socket", str(socket_path),
            "--exit-when-idle", str(idle))


@pytest.fixture
def account(config):
    user = config.get_user("someone01@chat.example.org")
    user.set_password("{SHA512-CRYPT}$6$salt$hash")
    return user


def test_an_idle_last_login_daemon_leaves_and_the_next_request_waits_for_its_next_start(
    config, account, socket_path
):
    addr = "someone01@chat.example.org"
    login = f"B1\t{addr}\t0\nS1\tshared/last-login/{addr}\t1700000123\nC1\n".encode()
    argv = lastlogin_argv(config, socket_path)
    with unix_listener(socket_path) as listener:
        first = start_activated(listener, *argv)
        assert dict_request(socket_path, login, 1) == b"O\n"
        status, log = finished(first)
        assert status == 0, log
        assert "leaving the socket to systemd" in log
        # Nobody serves the socket now: the connection succeeds and waits in the backlog.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
            waiting.settimeout(EXIT_TIMEOUT)
            waiting.connect(str(socket_path))
            waiting.sendall(login)
            second = start_activated(listener, *argv)
            assert waiting.recv(100) == b"O\n"
        assert finished(second)[0] == 0
    assert int(account.password_path.stat().st_mtime) == 1700000123 // 86400 * 86400


def test_a_daemon_does_not_leave_while_a_connection_is_open(config, socket_path):
    argv = lastlogin_argv(config, socket_path)
    with unix_listener(socket_path) as listener:
        proc = start_activated(listener, *argv)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
            held.settimeout(EXIT_TIMEOUT)
            held.connect(str(socket_path))
            # A Dovecot process keeps its dict connection; closing it under its feet would
            # make its next write fail. Ten idle windows later the daemon still serves it.
            time.sleep(IDLE * 10)
            assert proc.poll() is None
            held.sendall(b"Lshared/unknown\tuser\n")
            assert held.recv(100) == b"N\n"
        assert finished(proc)[0] == 0


def test_a_daemon_with_a_socket_of_its_own_ignores_exit_when_idle(config, socket_path):
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("LISTEN_PID", "LISTEN_FDS"):
        env.pop(name, None)
    argv = lastlogin_argv(config, socket_path, idle=0.2)
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + EXIT_TIMEOUT
        while not socket_path.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "did not start"
            time.sleep(0.05)
        time.sleep(2)
        assert proc.poll() is None, "left although nobody would start it again"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    assert b"--exit-when-idle ignored" in err


def test_a_pending_push_notification_keeps_the_metadata_daemon_up(config, tmp_path):
    from chatmaild.metadata import Metadata, MetadataDictProxy
    from chatmaild.notifier import Notifier

    async def scenario() -> tuple[bool, bool]:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow_sleep(seconds: float) -> None:
            started.set()
            await release.wait()

        notifier = Notifier(tmp_path / "queue", "http://127.0.0.1:9/", lambda a, t: None, sleep=slow_sleep)
        proxy = MetadataDictProxy(config, Metadata(config.mailboxes_dir), notifier)
        await notifier.start()
        # An item whose first attempt failed: it waits for its retry.
        notifier._spawn(notifier_item(tmp_path / "queue"))
        await started.wait()
        during = proxy.busy()
        release.set()
        await notifier.stop()
        return during, proxy.busy()

    assert asyncio.run(scenario()) == (True, False)


def notifier_item(queue: Path):
    from chatmaild.notifier import QueueItem

    return QueueItem(queue / ("0" * 32), "a@chat.example.org", int(time.time()), "token")


def test_the_metadata_daemon_starts_without_the_http_client_library(config):
    code = (
        "import sys, chatmaild.metadata, chatmaild.notifier; "
        "print('aiohttp' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "aiohttp is loaded only for the first push notification"


def test_new_credentials_are_served_on_a_tcp_socket_from_systemd_until_idle(config):
    import json
    import urllib.request

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = start_activated(
            listener, "chatmaild.newemail", str(config.path), "--listen", f"127.0.0.1:{port}",
            "--exit-when-idle", str(IDLE),
        )
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/new", method="POST"), timeout=EXIT_TIMEOUT
        ) as resp:
            answer = json.loads(resp.read())
        assert answer["email"].endswith("@chat.example.org")
        status, log = finished(proc)
        assert status == 0, log


def test_a_passed_socket_on_another_port_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = (
            "import sys; from chatmaild import activation\n"
            "try:\n"
            f"    activation.inherited_socket(('127.0.0.1', {port + 1}))\n"
            "except ValueError as exc:\n"
            "    print(exc)\n"
        )
        env = {**os.environ, "PYTHONPATH": SRC}
        launcher = LAUNCHER.replace("'-m', *sys.argv[2:]", "'-c', sys.argv[2]")
        out = subprocess.run(
            [sys.executable, "-c", launcher, str(listener.fileno()), code],
            pass_fds=(listener.fileno(),), env=env, capture_output=True, text=True, check=True,
        )
    assert f"expected a TCP socket on 127.0.0.1:{port + 1}" in out.stdout


def test_waiting_for_idle_counts_a_short_request_between_two_looks_as_activity():
    async def scenario() -> float:
        count = 0

        async def requests() -> None:
            nonlocal count
            for _ in range(4):
                await asyncio.sleep(0.1)
                count += 1  # a request that came and went between two polls

        began = time.monotonic()
        task = asyncio.create_task(requests())
        await activation.wait_until_idle(0.4, lambda: False, lambda: count)
        await task
        return time.monotonic() - began

    # Idle only after the last request (at about 0.4 s) plus the window.
    assert asyncio.run(scenario()) >= 0.75


def test_exit_when_idle_must_be_a_positive_number_of_seconds(config, socket_path, capsys):
    from chatmaild import lastlogin

    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SystemExit):
            lastlogin.main([str(config.path), "--socket", str(socket_path), "--exit-when-idle", bad])
        assert f"argument --exit-when-idle: {bad!r} is not a" in capsys.readouterr().err


def test_a_daemon_stopped_by_systemd_leaves_the_socket_file_in_place(config, account, socket_path):
    """systemctl stop/restart sends SIGTERM; the socket file is systemd's and must stay, or
    Dovecot finds nothing to connect to until the socket unit is restarted. (Leaving when idle
    closes the server, where Python 3.13 would unlink it: the test above.)"""
    import signal

    addr = "someone01@chat.example.org"
    login = f"B1\t{addr}\t0\nS1\tshared/last-login/{addr}\t1700000123\nC1\n".encode()
    argv = lastlogin_argv(config, socket_path, idle=3600)
    with unix_listener(socket_path) as listener:
        proc = start_activated(listener, *argv)
        assert dict_request(socket_path, login, 1) == b"O\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=EXIT_TIMEOUT)
        assert socket_path.exists()
        # ... and a connection made now waits for the next start.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
            waiting.settimeout(EXIT_TIMEOUT)
            waiting.connect(str(socket_path))

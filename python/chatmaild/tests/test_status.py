"""`chatmail status` with fake systemctl/postqueue answers, a made-up certificate and a temp mail dir."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from chatmaild import admin, status
from chatmaild.config import Config

# Real time: `chatmail status` itself (run below) judges the certificate against the clock.
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
EXPIRY_EXIT = "Mon 2026-11-30 03:12:01 UTC"


def make_cert(path: Path, days: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat.example.org")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=30))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path


class FakeSystem:
    """Answers systemctl show and postqueue -j like a relay would."""

    def __init__(self) -> None:
        self.units: dict[str, dict[str, str]] = {}
        for name in status.REQUIRED_UNITS + status.OPTIONAL_UNITS:
            sub = "waiting" if name.endswith(".timer") else "running"
            self.units[name] = {
                "LoadState": "loaded",
                "ActiveState": "active",
                "SubState": sub,
                "Result": "success",
            }
        self.units[status.EXPIRY_SERVICE] = {
            "LoadState": "loaded",
            "ActiveState": "inactive",
            "SubState": "dead",
            "Result": "success",
            "ExecMainStatus": "0",
            "ExecMainExitTimestamp": EXPIRY_EXIT,
        }
        self.queue = [
            {"queue_name": "deferred", "queue_id": "4XyZ1"},
            {"queue_name": "active", "queue_id": "4XyZ2"},
        ]
        self.postqueue_error: Exception | None = None
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "postqueue":
            if self.postqueue_error:
                raise self.postqueue_error
            return "".join(json.dumps(message) + "\n" for message in self.queue)
        assert argv[:2] == ["systemctl", "show"]
        properties = argv[2].removeprefix("--property=").split(",")
        blocks = []
        for name in argv[3:]:
            unit = self.units.get(
                name, {"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead"}
            )
            values = {"Id": name, **unit}
            blocks.append("".join(f"{p}={values.get(p, '')}\n" for p in properties))
        return "\n".join(blocks)


@pytest.fixture
def relay(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    cert = make_cert(tmp_path / "fullchain.pem", days=40.5)
    config = make_config(tls_external_cert_and_key=f"{cert} {tmp_path / 'key.pem'}")
    for addr, size in [("alice0001@chat.example.org", 3000), ("bob000001@chat.example.org", 5000)]:
        mailbox = config.mailboxes_dir / addr
        (mailbox / "cur").mkdir(parents=True)
        (mailbox / "password").write_text("{SHA512-CRYPT}$6$x$y")
        # Dovecot writes the message's size into its name (S=), and readers trust it.
        (mailbox / "cur" / f"1.msg,S={size}").write_bytes(b"x" * size)
    return config


def run(config: Config, system: FakeSystem, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = admin.main(
        ["--config", str(config.path), "status", *args], out=out, runner=system, syslog_address=None
    )
    return code, out.getvalue()


def fact(screen: str, name: str) -> str:
    line = next(line for line in screen.splitlines() if line.startswith(name + ":"))
    return line.split(":", 1)[1].strip()


def test_healthy_relay_shows_every_fact_and_exits_0(relay: Config) -> None:
    system = FakeSystem()
    result = status.collect_status(relay, runner=system, now=NOW)
    screen = status.format_status(result)
    assert result.problems() == [], screen
    for name in status.REQUIRED_UNITS + status.OPTIONAL_UNITS:
        assert any(line.split()[:2] == ["ok", name] for line in screen.splitlines()), name
    assert fact(screen, "mail queue") == "2 messages"
    assert fact(screen, "certificate").startswith("expires in 40 days")
    assert fact(screen, "accounts") == "2"
    assert fact(screen, "mail stored") == "8.0KB"
    assert fact(screen, "disk free").endswith("%)")
    assert fact(screen, "new accounts") == "on"
    assert fact(screen, "last expiry run") == f"{EXPIRY_EXIT}, success (exit 0)"
    assert screen.rstrip().endswith("all well")
    code, _ = run(relay, system)
    assert code == 0


def test_a_socket_activated_daemon_that_left_when_idle_is_healthy_but_a_failed_one_is_not(
    relay: Config,
) -> None:
    system = FakeSystem()
    system.units["chatmail-newemail.service"].update(ActiveState="inactive", SubState="dead", Result="success")
    assert status.collect_status(relay, runner=system, now=NOW).problems() == []
    system.units["chatmail-newemail.service"].update(Result="exit-code")
    assert status.collect_status(relay, runner=system, now=NOW).problems() == [
        "chatmail-newemail.service is inactive (dead), last result exit-code"
    ]
    # An always-running daemon that is inactive is a problem even after a clean exit.
    system.units["doveauth.service"].update(ActiveState="inactive", SubState="dead", Result="success")
    assert "doveauth.service is inactive (dead)" in status.collect_status(relay, runner=system, now=NOW).problems()


def test_a_failed_unit_makes_status_exit_1_and_names_it(relay: Config) -> None:
    system = FakeSystem()
    system.units["filtermail.service"].update(ActiveState="failed", SubState="failed", Result="exit-code")
    code, screen = run(relay, system)
    assert code == 1
    assert "filtermail.service is failed (failed), last result exit-code" in screen
    assert "1 problem:" in screen


def test_missing_optional_unit_is_shown_but_a_missing_required_one_is_a_problem(relay: Config) -> None:
    system = FakeSystem()
    del system.units["coturn.service"]
    result = status.collect_status(relay, runner=system, now=NOW)
    assert result.problems() == []
    assert "-- coturn.service" in status.format_status(result)
    del system.units["doveauth.service"]
    result = status.collect_status(relay, runner=system, now=NOW)
    assert result.problems() == ["doveauth.service is not installed"]


def test_a_failed_expiry_run_is_a_problem(relay: Config) -> None:
    system = FakeSystem()
    system.units[status.EXPIRY_SERVICE].update(Result="exit-code", ExecMainStatus="1")
    result = status.collect_status(relay, runner=system, now=NOW)
    assert result.problems() == ["the last expiry run failed (exit-code)"]
    assert fact(status.format_status(result), "last expiry run") == f"{EXPIRY_EXIT}, exit-code (exit 1)"


def test_an_expiry_job_that_has_not_run_since_boot_is_no_problem(relay: Config) -> None:
    system = FakeSystem()
    system.units[status.EXPIRY_SERVICE].update(ExecMainExitTimestamp="", Result="success")
    result = status.collect_status(relay, runner=system, now=NOW)
    assert result.problems() == []
    assert fact(status.format_status(result), "last expiry run") == "not since boot"


def test_a_certificate_close_to_expiry_is_a_problem(relay: Config, tmp_path: Path) -> None:
    cert = make_cert(tmp_path / "soon.pem", days=5.5)
    result = status.collect_status(relay, runner=FakeSystem(), now=NOW, cert_path=cert)
    assert result.cert_days == 5
    assert result.problems() == ["the certificate expires in 5 days"]


def test_a_missing_certificate_is_a_problem_naming_the_file(relay: Config, tmp_path: Path) -> None:
    result = status.collect_status(relay, runner=FakeSystem(), now=NOW, cert_path=tmp_path / "none.pem")
    assert result.cert_days is None
    assert len(result.problems()) == 1 and "none.pem" in result.problems()[0]


def test_queue_size_is_unknown_when_postqueue_fails(relay: Config) -> None:
    system = FakeSystem()
    system.postqueue_error = subprocess.CalledProcessError(
        69, ["postqueue", "-j"], stderr="postqueue: fatal: Queue report unavailable - mail system is down\n"
    )
    screen = status.format_status(status.collect_status(relay, runner=system, now=NOW))
    assert fact(screen, "mail queue") == (
        "unknown (postqueue exited with 69: postqueue: fatal: Queue report unavailable - mail system is down)"
    )


def test_new_accounts_switch_shows_off_while_the_nocreate_file_exists(relay: Config) -> None:
    relay.nocreate_file.touch()
    screen = status.format_status(status.collect_status(relay, runner=FakeSystem(), now=NOW))
    assert fact(screen, "new accounts") == "off (the nocreate file exists)"


def test_systemd_is_asked_once_for_all_units_and_once_for_the_expiry_run(relay: Config) -> None:
    system = FakeSystem()
    status.collect_status(relay, runner=system, now=NOW)
    systemctl = [call for call in system.calls if call[0] == "systemctl"]
    assert [call[3:] for call in systemctl] == [
        list(status.REQUIRED_UNITS + status.OPTIONAL_UNITS),
        [status.EXPIRY_SERVICE],
    ]


def test_systemctl_show_output_is_split_into_one_block_per_unit() -> None:
    text = "Id=a.service\nLoadState=loaded\n\nId=b.service\nLoadState=not-found\n"
    assert status.parse_systemctl_show(text) == [
        {"Id": "a.service", "LoadState": "loaded"},
        {"Id": "b.service", "LoadState": "not-found"},
    ]

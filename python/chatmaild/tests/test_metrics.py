"""The relay's metrics: the daemons' counter files, the textfile `chatmail metrics` writes,
and the events each daemon counts (through the daemons' real code paths)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import stat
from pathlib import Path

import pytest
from test_filtermail import RECIPIENT, REMOTE, SENDER, Relay, run_filter  # noqa: F401  (a fixture)
from test_notifier import ADDR as PUSH_ADDR
from test_notifier import Clock, PushProxy, make_notifier
from test_notifier import run as run_proxy

from chatmaild import admin, expire, metrics
from chatmaild.doveauth import ALLOWED, AccountStore
from chatmaild.metrics import Counters, MetricError, parse_text, series_key, series_total
from chatmaild.ratelimit import RateLimiter

REFUSALS = "chatmail_refusals_total"
ACCEPTED = "chatmail_deliveries_accepted_total"


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


def stored(path: Path) -> dict:
    return metrics.read_counter_file(path)


# --- counters and their files ------------------------------------------------


def test_a_daemon_continues_counting_from_its_file_after_a_restart(metrics_dir):
    first = Counters.for_source(metrics_dir, "doveauth")
    first.inc("chatmail_accounts_created_total")
    first.inc("chatmail_accounts_created_total")
    first.close()
    second = Counters.for_source(metrics_dir, "doveauth")
    second.inc("chatmail_accounts_created_total")
    second.close()
    assert stored(metrics_dir / "doveauth.json") == {("chatmail_accounts_created_total", ()): 3}


def test_every_change_reaches_the_file_without_the_caller_waiting_for_the_disk(metrics_dir):
    counters = Counters.for_source(metrics_dir, "filtermail-outgoing")
    for _ in range(500):
        counters.inc(REFUSALS, direction="outgoing", code="523")
    counters.flush()
    # Read while the daemon is still running, as `chatmail metrics` does.
    assert stored(metrics_dir / "filtermail-outgoing.json") == {
        series_key(REFUSALS, {"direction": "outgoing", "code": "523"}): 500
    }
    assert [p.name for p in metrics_dir.iterdir()] == ["filtermail-outgoing.json"], "no temporary file is left"
    counters.close()


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("chatmail_mail_from_total", {}),  # not a metric of the registry
        (REFUSALS, {"direction": "outgoing", "code": "someone@example.org"}),
        (REFUSALS, {"direction": "outgoing", "code": "250"}),  # not a refusal
        (REFUSALS, {"direction": "sideways", "code": "523"}),
        (REFUSALS, {"direction": "outgoing"}),  # a label missing
        ("chatmail_accounts_created_total", {"addr": "someone@example.org"}),  # a label too many
    ],
)
def test_a_series_outside_the_registry_cannot_be_counted(name, labels):
    with pytest.raises(MetricError):
        Counters(None).inc(name, **labels)


def test_a_file_with_a_forged_series_is_read_without_it(metrics_dir, caplog):
    path = metrics_dir / "filtermail-incoming.json"
    path.write_text(json.dumps({"format": 1, "samples": [
        {"name": ACCEPTED, "labels": {"direction": "incoming"}, "value": 7},
        {"name": ACCEPTED, "labels": {"direction": "bob@example.org"}, "value": 1},
        {"name": "chatmail_secret", "labels": {}, "value": 1},
        {"name": ACCEPTED, "labels": {"direction": "outgoing"}, "value": "lots"},
    ]}))
    assert stored(path) == {series_key(ACCEPTED, {"direction": "incoming"}): 7}
    assert "bob@example.org" in caplog.text  # logged as the reason it was skipped


def test_a_damaged_counter_file_counts_as_empty_and_is_replaced(metrics_dir):
    (metrics_dir / "doveauth.json").write_text('{"format": 1, "samp')
    counters = Counters.for_source(metrics_dir, "doveauth")
    counters.inc("chatmail_accounts_created_total")
    counters.close()
    assert stored(metrics_dir / "doveauth.json") == {("chatmail_accounts_created_total", ()): 1}


def test_two_runs_of_a_one_shot_job_add_up_and_its_gauge_holds_the_last_run(metrics_dir):
    for when in (1000.0, 2000.0):
        run = Counters.for_source(metrics_dir, "expire", write_behind=False)
        run.inc("chatmail_expired_accounts_total", 2)
        run.set("chatmail_expire_last_run_timestamp_seconds", when)
        run.add_to_file()
    assert stored(metrics_dir / "expire.json") == {
        ("chatmail_expired_accounts_total", ()): 4,
        ("chatmail_expire_last_run_timestamp_seconds", ()): 2000.0,
    }


def test_a_directory_that_cannot_be_written_is_logged_once_and_counting_goes_on(tmp_path, caplog):
    counters = Counters.for_source(tmp_path / "missing", "doveauth")
    for _ in range(3):
        counters.inc("chatmail_accounts_created_total")
        counters.flush()
    counters.close()
    assert counters.get("chatmail_accounts_created_total") == 3
    assert caplog.text.count("cannot write the counters") == 1


def test_counters_without_a_directory_stay_in_memory(tmp_path):
    counters = Counters.for_source(None, "doveauth")
    counters.inc("chatmail_accounts_created_total")
    counters.close()
    assert counters.get("chatmail_accounts_created_total") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("reply", "code"),
    [("523 Encryption Needed", "523"), ("450 4.7.1: Too much", "450"), ("552", "552"),
     ("250 OK", None), ("5234 nonsense", None), ("", None), ("abc", None)],
)
def test_the_code_of_a_reply_is_its_first_three_digits_if_it_refuses(reply, code):
    assert metrics.reply_code(reply) == code


# --- the text format -----------------------------------------------------------


def make_mailbox(mailboxes: Path, addr: str, messages: dict[str, int], password: bool = True) -> None:
    home = mailboxes / addr
    for sub in ("cur", "new", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    if password:
        (home / "password").write_text("{SHA512-CRYPT}$6$x")
    (home / "dovecot.index").write_bytes(b"x" * 1000)  # not a message
    for i, (sub, size) in enumerate(messages.items()):
        where, _, _ = sub.partition("#")
        (home / where / f"1700000000.M{i}P1.host,S={size},W={size + 10}:2,S").write_bytes(b"m" * size)


def test_the_textfile_has_help_and_type_once_per_metric_before_its_samples(metrics_dir, tmp_path):
    counters = Counters.for_source(metrics_dir, "filtermail-outgoing")
    counters.inc(REFUSALS, direction="outgoing", code="523")
    counters.inc(REFUSALS, direction="outgoing", code="451")
    counters.close()
    text = metrics.render(metrics.collect(metrics_dir, tmp_path / "mail", tmp_path / "queue"))
    lines = text.splitlines()
    assert text.endswith("\n") and "" not in lines
    seen: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in seen, f"{name} declared twice"
            seen.append(name)
            assert re.fullmatch(rf"# TYPE {name} (counter|gauge)", lines[i + 1])
        elif not line.startswith("#"):
            name = re.match(r"[a-z_]+", line).group(0)
            assert seen and seen[-1] == name, f"{line!r} is not under its own HELP/TYPE"
            assert re.fullmatch(r'[a-z_]+(\{([a-z_]+="[^"\\\n]*",?)+\})? -?[0-9.e+]+', line), line
    assert seen == [m.name for m in metrics.METRICS if m.name in seen]
    values = parse_text(text)
    assert values[series_key(REFUSALS, {"direction": "outgoing", "code": "523"})] == 1
    assert values[series_key(REFUSALS, {"direction": "outgoing", "code": "451"})] == 1


def test_declared_refusal_codes_and_both_directions_are_shown_as_zero_before_they_happen(metrics_dir, tmp_path):
    values = parse_text(metrics.render(metrics.collect(metrics_dir, tmp_path / "mail", tmp_path / "q")))
    for direction in ("outgoing", "incoming"):
        assert values[series_key(ACCEPTED, {"direction": direction})] == 0
        for code in ("523", "450", "552", "554"):
            assert values[series_key(REFUSALS, {"direction": direction, "code": code})] == 0
    assert values[("chatmail_pushes_dropped_total", (("outcome", "deadline"),))] == 0


def test_the_counts_of_every_daemon_are_added_up(metrics_dir, tmp_path):
    for source, direction in (("filtermail-outgoing", "outgoing"), ("filtermail-incoming", "incoming")):
        c = Counters.for_source(metrics_dir, source)
        c.inc(REFUSALS, 2, direction=direction, code="523")
        c.inc(ACCEPTED, 5, direction=direction)
        c.close()
    values = metrics.collect(metrics_dir, tmp_path / "mail", tmp_path / "q")
    assert series_total(values, REFUSALS, code="523") == 4
    assert series_total(values, ACCEPTED) == 10
    assert series_total(values, ACCEPTED, direction="incoming") == 5


def test_accounts_messages_bytes_and_waiting_pushes_are_measured_from_the_file_system(tmp_path):
    mail = tmp_path / "mail"
    make_mailbox(mail, "a@x.org", {"cur": 100, "new": 20, "tmp": 5000})  # tmp: still being delivered
    make_mailbox(mail, "b@x.org", {"new": 3})
    make_mailbox(mail, "nopassword@x.org", {"new": 7}, password=False)
    (mail / "pending_notifications").mkdir()
    for i in range(3):
        (mail / "pending_notifications" / f"{i:032x}").write_text("x")
    values = metrics.collect(None, mail, mail / "pending_notifications")
    assert values == {
        ("chatmail_stored_accounts", ()): 2,
        ("chatmail_stored_messages", ()): 3,
        ("chatmail_stored_message_bytes", ()): 123,
        ("chatmail_pushes_pending", ()): 3,
    }


def test_label_values_are_escaped_in_the_text_format():
    text = metrics.render({("chatmail_refusals_total", (("code", 'a"b\\c\nd'), ("direction", "outgoing"))): 1})
    assert 'code="a\\"b\\\\c\\nd"' in text
    assert parse_text(text) == {("chatmail_refusals_total", (("code", 'a"b\\c\nd'), ("direction", "outgoing"))): 1}


# --- chatmail metrics ----------------------------------------------------------


def test_chatmail_metrics_prints_the_text_format(make_config, metrics_dir, tmp_path):
    config = make_config(metrics_dir=metrics_dir)
    make_mailbox(config.mailboxes_dir, "a@chat.example.org", {"new": 42})
    c = Counters.for_source(metrics_dir, "doveauth")
    c.inc("chatmail_accounts_created_total")
    c.close()
    out = io.StringIO()
    assert admin.main(["--config", str(config.path), "metrics"], out=out, syslog_address=None) == 0
    values = parse_text(out.getvalue())
    assert values[("chatmail_accounts_created_total", ())] == 1
    assert values[("chatmail_stored_accounts", ())] == 1
    assert values[("chatmail_stored_message_bytes", ())] == 42


def test_chatmail_metrics_writes_a_world_readable_textfile_by_renaming_it_into_place(make_config, metrics_dir):
    config = make_config(metrics_dir=metrics_dir)
    out = io.StringIO()
    assert admin.main(["metrics", "--config", str(config.path), "--textfile", str(metrics_dir)], out=out,
                      syslog_address=None) == 0
    assert out.getvalue() == ""
    prom = metrics_dir / "chatmail.prom"
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644, "the node exporter runs as another user"
    assert ("chatmail_stored_accounts", ()) in parse_text(prom.read_text())
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["chatmail.prom"]


def test_chatmail_metrics_fails_with_status_1_when_it_cannot_write(make_config, tmp_path):
    config = make_config()
    code = admin.main(["metrics", "--config", str(config.path), "--textfile", str(tmp_path / "no/such/dir/x.prom")],
                      out=io.StringIO(), syslog_address=None)
    assert code == 1


def test_without_metrics_dir_only_the_measured_gauges_are_shown(make_config):
    config = make_config()
    assert config.metrics_dir is None
    out = io.StringIO()
    assert admin.main(["metrics", "--config", str(config.path)], out=out, syslog_address=None) == 0
    assert {name for name, _ in parse_text(out.getvalue())} == {
        m.name for m in metrics.METRICS if m.source == "measured"
    }


# --- what each daemon counts ---------------------------------------------------


def test_filtermail_counts_accepted_mail_and_each_refusal_under_its_code(run_filter, mails, metrics_dir):  # noqa: F811
    encrypted = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)
    cleartext = mails.make("plain", SENDER, RECIPIENT)
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: 1_800_000_000.0)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(SENDER, [RECIPIENT, "other@example.net"], encrypted))[0] == 250
        assert (await relay.send(SENDER, [RECIPIENT], cleartext))[0] == 523
        assert (await relay.send(SENDER, [RECIPIENT], encrypted))[0] == 250
        assert (await relay.send(SENDER, [RECIPIENT], encrypted))[0] == 450
        c = relay.handler.counters
        assert c.get(ACCEPTED, direction="outgoing") == 2, "one per message, not per recipient"
        assert c.get(REFUSALS, direction="outgoing", code="523") == 1
        assert c.get(REFUSALS, direction="outgoing", code="450") == 1
        c.flush()
        assert series_total(stored(metrics_dir / "filtermail-outgoing.json"), REFUSALS) == 2

    run_filter("outgoing", scenario, ratelimiter=limiter, metrics_dir=metrics_dir)


def test_filtermail_counts_a_message_over_the_size_limit_as_552(run_filter, mails, metrics_dir):  # noqa: F811
    data = mails.make("encrypted", from_addr=SENDER, to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(SENDER, [RECIPIENT], data))[0] == 552
        assert relay.handler.counters.get(REFUSALS, direction="outgoing", code="552") == 1
        assert relay.handler.counters.get(ACCEPTED, direction="outgoing") == 0

    run_filter("outgoing", scenario, max_message_size=len(data) // 2, metrics_dir=metrics_dir)


def test_incoming_filtermail_counts_an_unsigned_message_as_554(run_filter, mails, metrics_dir):  # noqa: F811
    data = mails.make("encrypted", from_addr=f"alice@{REMOTE}", to_addr=RECIPIENT)

    async def scenario(relay: Relay) -> None:
        assert (await relay.send(f"alice@{REMOTE}", [RECIPIENT], data))[0] == 554
        assert relay.handler.counters.get(REFUSALS, direction="incoming", code="554") == 1

    run_filter("incoming", scenario, metrics_dir=metrics_dir)


def test_doveauth_counts_an_account_once_however_many_logins_race_to_create_it(make_config, metrics_dir):
    config = make_config(metrics_dir=metrics_dir)

    async def main() -> None:
        store = AccountStore(config, resource_gate=lambda _: ALLOWED)
        results = await asyncio.gather(*(store.login("abcdefghi@chat.example.org", "pw-123456789") for _ in range(5)))
        assert len(set(results)) == 1
        await store.login("abcdefghi@chat.example.org", "pw-123456789")
        store.counters.close()

    asyncio.run(main())
    assert stored(metrics_dir / "doveauth.json") == {("chatmail_accounts_created_total", ()): 1}


def test_the_notifier_counts_queued_sent_failed_and_dropped_notifications(tmp_path):
    proxy, clock = PushProxy(statuses=[500, 200, 410]), Clock()
    counters = Counters(None)

    async def body(url: str) -> None:
        notifier = make_notifier(tmp_path, url, clock, [], counters=counters)
        await notifier.start()
        notifier.enqueue(PUSH_ADDR, "token-a")  # 500, then 200 on the retry
        await notifier.wait_idle()
        notifier.enqueue(PUSH_ADDR, "token-b")  # 410: a dead token
        await notifier.wait_idle()
        await notifier.stop()

    run_proxy(proxy, body)
    assert counters.snapshot() == {
        ("chatmail_pushes_queued_total", ()): 2,
        ("chatmail_push_attempts_failed_total", ()): 1,
        ("chatmail_pushes_sent_total", ()): 1,
        ("chatmail_pushes_dropped_total", (("outcome", "dead_token"),)): 1,
    }


def test_the_expiry_counts_what_it_removed_and_when(make_config, metrics_dir):
    config = make_config(metrics_dir=metrics_dir)
    stats = expire.ExpireStats(accounts_removed=1, account_bytes_removed=500, files_removed=4, bytes_removed=70,
                               quota_files_removed=1)
    expire.count_removals(config, stats, now=1234.0)
    expire.count_removals(config, stats, now=5678.0)
    assert stored(metrics_dir / "expire.json") == {
        ("chatmail_expired_accounts_total", ()): 2,
        ("chatmail_expired_bytes_total", ()): 1140,
        ("chatmail_expired_messages_total", (("reason", "quota"),)): 2,
        ("chatmail_expired_messages_total", (("reason", "retention"),)): 6,
        ("chatmail_expire_last_run_timestamp_seconds", ()): 5678.0,
    }


def test_a_dry_run_of_the_expiry_counts_nothing(make_config, metrics_dir):
    config = make_config(metrics_dir=metrics_dir)
    make_mailbox(config.mailboxes_dir, "a@chat.example.org", {"new": 10})
    assert expire.main([str(config.path)]) == 0
    assert list(metrics_dir.iterdir()) == []
    assert expire.main([str(config.path), "--remove"]) == 0
    assert ("chatmail_expire_last_run_timestamp_seconds", ()) in stored(metrics_dir / "expire.json")


def test_deliveries_over_https_are_counted_once_and_the_receivers_own_refusals_too(make_config, mails, dkim_domains):
    from aiohttp.test_utils import TestClient, TestServer
    from aiosmtpd.smtp import SMTP
    from test_filtermail import FakePostfix

    from chatmaild.dkimcheck import DkimVerifier
    from chatmaild.filtermail import FilterHandler
    from chatmaild.mxdeliv import make_app

    alice = f"alice@{REMOTE}"
    signed = dkim_domains.sign(mails.make("encrypted", from_addr=alice, to_addr=RECIPIENT), REMOTE)

    async def main() -> Counters:
        loop = asyncio.get_running_loop()
        postfix_server = await loop.create_server(lambda: SMTP(FakePostfix()), "127.0.0.1", 0)
        config = make_config(postfix_reinject_port_incoming=postfix_server.sockets[0].getsockname()[1],
                             max_message_size=len(signed) + 100)
        handler = FilterHandler(config, "incoming", dkim=DkimVerifier(lookup_txt=dkim_domains.lookup_txt),
                                counters=Counters(None))
        async with postfix_server, TestClient(TestServer(make_app(handler))) as client:
            try:
                headers = {"X-MAIL-FROM": alice, "X-MAIL-TO": RECIPIENT}
                assert (await client.post("/mxdeliv", data=signed, headers=headers)).status == 200
                assert (await client.post("/mxdeliv", data=signed + b"x" * 200, headers=headers)).status == 413
                assert (await client.post("/mxdeliv", data=signed, headers={"X-MAIL-FROM": alice})).status == 400
            finally:
                await handler.close_reinjections()
        return handler.counters

    counters = asyncio.run(main())
    assert counters.snapshot() == {
        series_key(ACCEPTED, {"direction": "incoming"}): 1,
        series_key(REFUSALS, {"direction": "incoming", "code": "552"}): 1,
        series_key(REFUSALS, {"direction": "incoming", "code": "554"}): 1,
    }

"""bench_delivery.py's arithmetic and journal reading, on lines as the relays write them
(no lab needed)."""

from __future__ import annotations

import bench_delivery as bd

MID = "4a2c81f7-cb85-42f3-9243-9d4c851aeae8@localhost"
# (time, SYSLOG_IDENTIFIER, MESSAGE) as journalctl -o json gives them, for one message that
# relay2 accepts by submission and relays, and one it receives and delivers.
SENDER = [
    (1.000, "postfix/submissions/smtpd", "NOQUEUE: client=unknown[10.77.0.100], sasl_method=PLAIN, "
                                         "sasl_username=bob@relay2.test"),
    (1.004, "postfix/reinject/smtpd", "0723814A1C1: client=unknown[127.0.0.1]"),
    (1.005, "postfix/cleanup", f"0723814A1C1: message-id=<{MID}>"),
    (1.030, "postfix/smtp", "0723814A1C1: to=<alice@relay1.test>, relay=relay1.test[10.77.0.11]:25, "
                            "delay=0.02, delays=0/0/0.01/0.02, dsn=2.0.0, status=sent (250 OK)"),
]
RECEIVER = [
    (1.020, "postfix/cleanup", f"0369314A271: message-id=<{MID}>"),
    (1.045, "dovecot", f"lmtp(alice@relay1.test)<592><RbmA>: sieve: msgid=<{MID}>: stored mail into mailbox "
                       "'INBOX'"),
    (1.046, "postfix/lmtp", "0369314A271: to=<alice@relay1.test>, relay=relay1.test[private/dovecot-lmtp], "
                            "delay=0.04, delays=0.01/0/0.01/0.01, dsn=2.0.0, status=sent (250 2.0.0 Saved)"),
]


def test_nearest_rank_percentiles_make_p99_of_fifty_the_largest():
    values = [i / 100 for i in range(1, 51)]
    assert bd.percentile(values, 50) == 0.25
    assert bd.percentile(values, 90) == 0.45
    assert bd.percentile(values, 99) == 0.50
    assert bd.summary(values)["max"] == 0.50


def test_a_relays_journal_gives_each_message_id_its_queue_relay_and_delivery_times():
    steps, mails = bd.trace(SENDER)
    assert mails == [(1.000, "bob@relay2.test")]
    assert steps[MID]["queued"] == 1.005 and steps[MID]["relayed"] == 1.030
    assert steps[MID]["relayed_delays"] == (0.0, 0.0, 0.01, 0.02)
    steps, mails = bd.trace(RECEIVER)
    assert mails == []
    assert steps[MID] == {"queued": 1.020, "saved": 1.045, "delivered": 1.046,
                          "delivered_delays": (0.01, 0.0, 0.01, 0.01)}


def test_the_save_is_also_read_from_lmtps_line_without_a_sieve_script():
    line = (1.045, "dovecot", f"lmtp(alice@relay1.test)<592><RbmA>: msgid=<{MID}>: saved mail to INBOX")
    steps, _ = bd.trace([line])
    assert steps[MID] == {"saved": 1.045}


def test_message_ids_are_read_from_the_cores_message_info():
    info = "Sent: 2026.11.30 15:40:01\n\nMessage-ID: 553e84f2-4579@localhost\nLast seen: -"
    assert bd.message_id(info) == "553e84f2-4579@localhost"
    assert bd.message_id("no id here") == ""

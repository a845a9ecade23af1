#!/usr/bin/env python3
"""Delivery latency in the lab: Delta Chat core to core across the two relays, and a file
landing in a maildir to Dovecot's IDLE `* n EXISTS` on a relay under systemd.

Needs a lab that is up (`./lab up`; `./lab bench` brings it up and runs this). Two parts:

1. Core to core. On the client host, one Delta Chat core (deltachat-rpc-server) with two
   fresh accounts, one per relay, Secure-Joined. Messages go one at a time, alternating
   direction; each waits for the receiver's incoming-message event before the next is sent,
   so the figure is latency, not queueing. Measured: the send call to the receiver's
   IncomingMsg event. Unmeasured warm-up messages go first (--warmup). One account sends at
   most once per --interval: Delta Chat's core limits its own sending to one message a
   second, and its SMTP loop, once over that, sleeps without noticing a new message (up to
   a second) — that wait is the client's, not the relays'.
2. File to EXISTS. Inside the first relay's container, as the mail user: an IMAP client logs
   a fresh account in (creating it), IDLEs on its INBOX, and each round renames a message
   file from the account's tmp/ into new/ and waits for `* n EXISTS`.

With --profile, each core-to-core message is followed through both relays' journals by its
Message-ID (Postfix cleanup, smtp and lmtp lines, Dovecot's lmtp) and the time is split into
hops. Prints one table: figure, measured, goal, met. Bounded: every wait has a timeout, and
each part stops after its rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Goals (issue "Performance"): seconds.
GOAL_CORE_P50 = 0.25
GOAL_CORE_P99 = 0.40
GOAL_EXISTS = 0.06


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p % of them at or below it
    (with 50 values, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values)}


def progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- part 1: on the client host


class Events:
    """Every event of one account, stamped with the wall-clock time it came out of the core
    (comparable with the relays' journals: one kernel clock). A thread drains the client's
    per-account queue at once, so a stamp is not the time someone got round to reading it;
    deltachat-rpc-client's own waits also have no timeout, which a bounded bench needs."""

    def __init__(self, account):
        import threading

        self.account = account
        self.log: list[tuple[float, dict]] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        import queue

        source = self.account._rpc.get_queue(self.account.id)
        while not self.stopped:
            try:
                event = source.get(timeout=0.2)
            except queue.Empty:
                continue
            with self.cond:
                self.log.append((time.time(), event))
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.log)

    def wait(self, pred, start: int, deadline: float) -> tuple[int, float, dict]:
        """The first event from index start on that satisfies pred: (index, time, event)."""
        i = start
        with self.cond:
            while True:
                while i < len(self.log):
                    if pred(self.log[i][1]):
                        return i, *self.log[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"account {self.account.id}: no awaited event in time")
                self.cond.wait(left)

    def first(self, pred, start: int, end: int | None = None) -> float:
        """When the first event in [start, end) satisfying pred came, or NaN."""
        with self.cond:
            return next((t for t, e in self.log[start:end] if pred(e)), float("nan"))

    def stop(self) -> None:
        self.stopped = True
        self.thread.join()


def kind(name: str):
    return lambda e: e.get("kind") == name


def info(text: str):
    """A core log line (its Info events; wording as in the core's sources, may change)."""
    return lambda e: e.get("kind") == "Info" and text in e.get("msg", "")


def message_id(info_text: str) -> str:
    """The Message-ID in the core's message info text (its snapshot has none)."""
    m = re.search(r"^Message-ID: *<?([^>\s]+)>?", info_text, re.MULTILINE)
    return m.group(1) if m else ""


def run_cores(domains: list[str], messages: int, warmup: int, timeout: float, interval: float) -> dict:
    """Secure-Join two fresh accounts, then send messages one at a time, alternating direction.
    Returns per message: direction, sender, Message-ID and wall-clock times: send call, the
    sender's SMTP done, the receiver's IDLE wake-up, fetch done, and its IncomingMsg event."""
    import dcdemo

    step = dcdemo.Step(out=sys.stderr)
    with dcdemo.deltachat() as dc:
        step(f"configuring a on {domains[0]} and b on {domains[1]} (first logins create them)")
        a, a_addr = dcdemo.make_account(dc, domains[0], "a")
        b, b_addr = dcdemo.make_account(dc, domains[1], "b")
        events = {"a": Events(a), "b": Events(b)}
        try:
            step("Secure-Join: b scans a's invite")
            b.secure_join(a.get_qr_code())
            deadline = time.monotonic() + 120
            for who, progress in (("a", "SecurejoinInviterProgress"), ("b", "SecurejoinJoinerProgress")):
                events[who].wait(lambda e: e.get("kind") == progress and e.get("progress") == 1000, 0, deadline)
            step("Secure-Join done: both verified")
            chats = {"a": a.get_chat_by_contact(a.get_contact_by_addr(b_addr)),
                     "b": b.get_chat_by_contact(b.get_contact_by_addr(a_addr))}
            accounts, addrs = {"a": a, "b": b}, {"a": a_addr, "b": b_addr}
            where = {"a": domains[0], "b": domains[1]}
            results: list[dict] = []
            last_send = {"a": 0.0, "b": 0.0}
            for i in range(2 * (warmup + messages)):
                sender, receiver = ("a", "b") if i % 2 == 0 else ("b", "a")
                text = f"bench {i} {sender}->{receiver}"
                # The core sends at most one message a second (a burst of three), and while it
                # is over that rate its SMTP loop sleeps without hearing new messages: keep
                # each sender under it, or the figure is the client's own rate limit.
                time.sleep(max(0.0, last_send[sender] + interval - time.monotonic()))
                last_send[sender] = time.monotonic()
                s0, r0 = events[sender].mark(), events[receiver].mark()
                deadline = time.monotonic() + timeout
                t_send = time.time()
                msg = chats[sender].send_text(text)
                r1, t_in, event = events[receiver].wait(kind("IncomingMsg"), r0, deadline)
                got = accounts[receiver].get_message_by_id(event["msgId"]).get_snapshot()
                if got.text != text:
                    raise RuntimeError(f"message {i}: expected {text!r}, got {got.text!r}")
                if not got.show_padlock:
                    raise RuntimeError(f"message {i} arrived without end-to-end encryption")
                try:
                    _, t_sent, _ = events[sender].wait(kind("SmtpMessageSent"), s0, time.monotonic() + 5)
                except TimeoutError:
                    t_sent = float("nan")
                if i < 2 * warmup:
                    continue
                results.append({
                    "dir": f"{where[sender]} -> {where[receiver]}", "from": addrs[sender],
                    "mid": message_id(msg.get_info()), "send": t_send, "smtp_sent": t_sent,
                    "idle_wake": events[receiver].first(info("Idle has NewData"), r0, r1),
                    "fetched": events[receiver].first(info("to receive_imf"), r0, r1),
                    "incoming": t_in})
                n = len(results)
                if n % 10 == 0 or n == 2 * messages:
                    lat = [r["incoming"] - r["send"] for r in results]
                    step(f"{n}/{2 * messages} messages, p50 so far {statistics.median(lat):.3f} s")
            return {"messages": results, "accounts": [a_addr, b_addr]}
        finally:
            for e in events.values():
                e.stop()


# ---------------------------------------------------------------- part 2: inside a relay

# Runs inside the relay's container as the mail user, with Debian's python3 (stdlib only).
EXISTS_PROBE = r'''
import json, os, secrets, selectors, socket, ssl, sys, time
rounds, timeout, pause, maildirs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
addr = secrets.token_hex(5)[:9] + "@" + sys.argv[5]
ctx = ssl.create_default_context()
ctx.check_hostname = False          # the relay's own IMAP on 127.0.0.1; TLS is not measured
ctx.verify_mode = ssl.CERT_NONE
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 993), 10))
sock.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(sock, selectors.EVENT_READ)
buf = b""
def until(pred, deadline):
    global buf
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if pred(line):
                return line
        if sock.pending() == 0:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError("imap: no answer in time")
        try:
            chunk = sock.recv(65536)
        except ssl.SSLWantReadError:
            continue
        if not chunk:
            raise EOFError("imap closed the connection")
        buf += chunk
def send(line):
    sock.setblocking(True); sock.sendall(line.encode() + b"\r\n"); sock.setblocking(False)
until(lambda l: l.startswith(b"* OK"), time.monotonic() + 10)
send(f"a LOGIN {addr} {secrets.token_urlsafe(16)}")
if not until(lambda l: l.startswith(b"a "), time.monotonic() + 10).startswith(b"a OK"):
    raise SystemExit("login refused")
send("b SELECT INBOX")
exists = 0
def count(l):
    global exists
    if l.startswith(b"* ") and l.rstrip().endswith(b" EXISTS"):
        exists = int(l.split()[1])
    return l.startswith(b"b ")
until(count, time.monotonic() + 10)
send("c IDLE")
until(lambda l: l.startswith(b"+"), time.monotonic() + 10)
maildir = os.path.join(maildirs, addr)
body = b"From: x@example.org\r\nTo: " + addr.encode() + b"\r\nSubject: idle\r\n\r\nhello\r\n"
times = []
for n in range(1, rounds + 1):
    name = f"{time.time_ns()}.M{n}P{os.getpid()}.bench,S={len(body)}"
    with open(os.path.join(maildir, "tmp", name), "wb") as f:
        f.write(body)
    want = f"* {exists + n} EXISTS".encode()
    t0 = time.monotonic()
    os.rename(os.path.join(maildir, "tmp", name), os.path.join(maildir, "new", name))
    until(lambda l: l.rstrip() == want, t0 + timeout)
    times.append(time.monotonic() - t0)
    if n % 10 == 0 or n == rounds:
        print(f"bench: {n}/{rounds} files, last {times[-1] * 1000:.1f} ms", file=sys.stderr, flush=True)
    time.sleep(pause)
send("DONE")
print(json.dumps({"account": addr, "times": times}))
'''


def run_exists(relay_name: str, rounds: int, timeout: float, pause: float) -> dict:
    from lab import BY_NAME, in_host, paths

    host = BY_NAME[relay_name]
    assert host.domain
    p = paths(relay_name)
    cmd = ["setpriv", f"--reuid={p['vmailUser']}", f"--regid={p['vmailUser']}", "--clear-groups",
           "python3", "-c", EXISTS_PROBE, str(rounds), str(timeout), str(pause), p["mailboxesDir"], host.domain]
    r = subprocess.run(in_host(host, cmd), stdout=subprocess.PIPE, text=True,
                       timeout=rounds * (timeout + pause) + 60)
    if r.returncode != 0:
        raise RuntimeError(f"the IDLE probe on {relay_name} failed (exit {r.returncode})")
    return json.loads(r.stdout)


# ---------------------------------------------------------------- profile from the journals


def journal_entries(relay_name: str, since: float) -> list[tuple[float, str, str]]:
    """(time, identifier, message) of the relay's journal since a wall-clock time; the time
    is when the process wrote the line where the journal knows it."""
    from lab import BY_NAME, host_run

    r = host_run(BY_NAME[relay_name], ["journalctl", "-o", "json", "--no-pager", "-q",
                                       f"--since=@{since:.0f}"], capture=True)
    out = []
    for line in r.stdout.splitlines():
        e = json.loads(line)
        msg = e.get("MESSAGE")
        if not isinstance(msg, str):
            continue
        ts = int(e.get("_SOURCE_REALTIME_TIMESTAMP") or e["__REALTIME_TIMESTAMP"]) / 1e6
        out.append((ts, e.get("SYSLOG_IDENTIFIER", ""), msg))
    return out


QUEUE_ID = re.compile(r"^([0-9A-Za-z]{6,}): (.*)")
SASL_USER = re.compile(r"NOQUEUE: client=.*sasl_username=(\S+)")
DELAYS = re.compile(r"delays=([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+)")


def trace(entries: list[tuple[float, str, str]]) -> tuple[dict[str, dict], list[tuple[float, str]]]:
    """What one relay's journal says about each Message-ID: when cleanup queued it, when
    the smtp client handed it on (`relayed`, with Postfix's delays a/b/c/d), when the lmtp
    client delivered it, when Dovecot's lmtp saved it. Also the submission services' MAIL
    lines, (time, SASL user): before the queue a message has no ID yet."""
    by_qid: dict[str, str] = {}
    steps: dict[str, dict] = {}
    mails: list[tuple[float, str]] = []
    for ts, ident, msg in entries:
        m = QUEUE_ID.match(msg)
        if ident.startswith("postfix/submission") and (u := SASL_USER.search(msg)):
            mails.append((ts, u.group(1)))
        elif ident.startswith("postfix") and m:
            qid, rest = m.groups()
            if rest.startswith("message-id=<"):
                by_qid[qid] = rest[len("message-id=<"):].split(">", 1)[0]
                steps.setdefault(by_qid[qid], {})["queued"] = ts
            elif qid in by_qid and "status=sent" in rest:
                kind = "delivered" if ident.endswith("/lmtp") else "relayed"
                steps[by_qid[qid]][kind] = ts
                if d := DELAYS.search(rest):
                    steps[by_qid[qid]][kind + "_delays"] = tuple(map(float, d.groups()))
        # LMTP's line once the message is in the maildir: "saved mail to INBOX" without a
        # Sieve script, "stored mail into mailbox 'INBOX'" after dedupe.sieve's implicit keep.
        elif ("saved mail to" in msg or "stored mail into mailbox" in msg) \
                and (m2 := re.search(r"msgid=<([^>]*)>", msg)):
            steps.setdefault(m2.group(1), {})["saved"] = ts
    return steps, mails


HOPS = [
    ("submit", "sending core: send call -> relay's MAIL FROM (render, encrypt, SMTP)"),
    ("filter_out", "sending relay: MAIL FROM -> queued (filtermail, reinject, DKIM)"),
    ("smtp_reply", "sending core: queued -> SMTP done (250 seen, core's bookkeeping)"),
    ("relay", "sending relay: queued -> relayed (qmgr, smtp client, receiving smtpd + filtermail)"),
    ("relay_conn", "  of which Postfix 'delays' c: DNS, TCP, TLS (0.01 s steps)"),
    ("relay_data", "  of which Postfix 'delays' d: transmission to the 250 (0.01 s steps)"),
    ("lmtp", "receiving relay: queued -> Dovecot saved (qmgr, lmtp)"),
    ("idle", "receiving relay+core: saved -> core's IDLE wakes (EXISTS)"),
    ("fetch", "receiving core: IDLE wakes -> message fetched (UID FETCH)"),
    ("decrypt", "receiving core: fetched -> IncomingMsg (decrypt, parse, store)"),
    ("relays", "relays' share: sender's SMTP done -> receiver's IDLE wakes"),
    ("cores", "cores' share: the rest of the total"),
    ("total", "total: send call -> IncomingMsg"),
]


def profile(results: list[dict], relays: list[str], since: float) -> dict[str, list[float]]:
    """Split each message's time into hops from both relays' journals (one clock: the
    relays and the client share this machine's kernel). Adds the hops to each result."""
    from lab import BY_NAME

    traced = {BY_NAME[name].domain: trace(journal_entries(name, since)) for name in relays}
    hops: dict[str, list[float]] = {key: [] for key, _ in HOPS}
    for r in results:
        src_dom, dst_dom = r["dir"].split(" -> ")
        (src_steps, src_mails), (dst_steps, _) = traced[src_dom], traced[dst_dom]
        src, dst = src_steps.get(r["mid"], {}), dst_steps.get(r["mid"], {})
        mail = next((ts for ts, user in src_mails if user == r["from"] and ts >= r["send"] - 0.05), None)
        if mail is None or not {"queued", "relayed"} <= src.keys() or "saved" not in dst:
            continue
        _, _, conn, data = src["relayed_delays"]
        total = r["incoming"] - r["send"]
        relays = r["idle_wake"] - r["smtp_sent"]
        r["hops"] = {"submit": mail - r["send"], "filter_out": src["queued"] - mail,
                     "smtp_reply": r["smtp_sent"] - src["queued"],
                     "relay": src["relayed"] - src["queued"], "relay_conn": conn, "relay_data": data,
                     "lmtp": dst["saved"] - dst["queued"], "idle": r["idle_wake"] - dst["saved"],
                     "fetch": r["fetched"] - r["idle_wake"], "decrypt": r["incoming"] - r["fetched"],
                     "relays": relays, "cores": total - relays, "total": total}
        for key, value in r["hops"].items():
            if not math.isnan(value):
                hops[key].append(value)
    return hops


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_table(cores: dict | None, exists: dict | None) -> bool:
    rows = []
    all_met = True
    if cores:
        for direction, values in cores["by_direction"].items():
            s = summary(values)
            rows.append((f"core -> core {direction} (n={s['n']})",
                         f"p50 {s['p50']:.3f}  p90 {s['p90']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f}",
                         "p50 <= 0.25, p99 <= 0.40",
                         verdict(s["p50"] <= GOAL_CORE_P50 and s["p99"] <= GOAL_CORE_P99)))
        s = summary(cores["all"])
        ok = s["p50"] <= GOAL_CORE_P50 and s["p99"] <= GOAL_CORE_P99
        all_met &= ok
        rows.append((f"core -> core, both ways (n={s['n']})",
                     f"p50 {s['p50']:.3f}  p90 {s['p90']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f}",
                     "p50 <= 0.25, p99 <= 0.40", verdict(ok)))
    if exists:
        s = summary(exists["times"])
        ok = s["p99"] <= GOAL_EXISTS
        all_met &= ok
        rows.append((f"file in new/ -> IDLE EXISTS, {exists['relay']} (n={s['n']})",
                     f"p50 {s['p50']:.3f}  p90 {s['p90']:.3f}  p99 {s['p99']:.3f}  max {s['max']:.3f}",
                     "<= 0.06 (p99)", verdict(ok)))
    widths = [max(len(r[i]) for r in rows + [("figure", "measured (s)", "goal (s)", "met")]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format("figure", "measured (s)", "goal (s)", "met"))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    return all_met


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_delivery.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50, help="measured messages each way (default 50)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured messages each way first (default 1)")
    parser.add_argument("--interval", type=float, default=1.2,
                        help="least seconds between two sends of one account (default 1.2: the core "
                             "itself holds its sending to one message a second)")
    parser.add_argument("--rounds", type=int, default=50, help="file -> EXISTS rounds (default 50)")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between file rounds (default 0.3)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for one message or one EXISTS (default 30)")
    parser.add_argument("--relay", default="relay1", help="relay for the file -> EXISTS part (default relay1)")
    parser.add_argument("--skip-cores", action="store_true", help="only the file -> EXISTS part")
    parser.add_argument("--skip-exists", action="store_true", help="only the core -> core part")
    parser.add_argument("--profile", action="store_true",
                        help="split core -> core time into hops from the relays' journals")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    # Internal: the core-to-core part, run on the client host by the main process.
    parser.add_argument("--cores-on-client", nargs=2, metavar="DOMAIN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.cores_on_client:
        result = run_cores(args.cores_on_client, args.messages, args.warmup, args.timeout, args.interval)
        print(json.dumps(result))
        return 0

    if os.geteuid() != 0:
        parser.error("needs root (it enters the lab's namespaces)")
    import lab
    import rootfs

    if not lab.is_up():
        parser.error("the lab is down: run ./lab up first (or ./lab bench)")
    started = time.time()
    progress(f"start, {load()}")
    cores = exists = None
    raw: dict = {}
    if not args.skip_cores:
        venv = Path(os.environ.get("CHATMAIL_LAB_VENV", rootfs.CACHE_DIR / "venv"))
        domains = [r.domain for r in lab.RELAYS if r.domain]
        progress(f"core -> core: {args.messages} messages each way between {domains[0]} and {domains[1]}")
        cmd = lab.in_host(lab.CLIENT, [str(venv / "bin/python"), str(Path(__file__).resolve()),
                                       "--messages", str(args.messages), "--warmup", str(args.warmup),
                                       "--timeout", str(args.timeout), "--interval", str(args.interval),
                                       "--cores-on-client", *domains])
        limit = 180 + 2 * (args.messages + args.warmup) * (args.timeout + args.interval)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=limit)
        if r.returncode != 0:
            progress("core -> core failed")
            return 1
        raw["cores"] = json.loads(r.stdout)
        msgs = raw["cores"]["messages"]
        by_dir: dict[str, list[float]] = {}
        for m in msgs:
            by_dir.setdefault(m["dir"], []).append(m["incoming"] - m["send"])
        cores = {"by_direction": by_dir, "all": [m["incoming"] - m["send"] for m in msgs]}
    if not args.skip_exists:
        progress(f"file -> EXISTS: {args.rounds} rounds on {args.relay}")
        exists = run_exists(args.relay, args.rounds, args.timeout, args.pause)
        exists["relay"] = args.relay
        raw["exists"] = exists
    print(flush=True)
    print(f"Delivery latency in the lab ({load()} at the end; other work on this machine slows it)")
    met = print_table(cores, exists)
    if cores and (args.profile or not met):
        print("\nWhere core -> core time goes (seconds, from the relays' journals by Message-ID):")
        hops = profile(raw["cores"]["messages"], [r.name for r in lab.RELAYS], started - 1)
        if not hops["total"]:
            print("  no message could be traced in the journals")
        width = max(len(label) for _, label in HOPS)
        for key, label in HOPS:
            values = hops[key]
            if values:
                print(f"  {label:<{width}}  p50 {percentile(values, 50):.3f}  p90 {percentile(values, 90):.3f}"
                      f"  max {max(values):.3f}  (n={len(values)})")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

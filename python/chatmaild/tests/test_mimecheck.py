from __future__ import annotations

import base64
import secrets

import pytest
from conftest import DOMAIN, armor, pgp_mime

from chatmaild.mimecheck import (
    REPLY_ENCRYPTION_NEEDED,
    check_armored_payload,
    check_encrypted,
    check_incoming,
    check_openpgp_packets,
    check_outgoing,
    from_address,
    is_mailer_daemon_report,
    is_securejoin,
    parse_message,
)

SENDER = f"sender@{DOMAIN}"
RECIPIENT = f"recipient@{DOMAIN}"

# kind: (encrypted?, securejoin?, mailer-daemon report?)
CLASSIFICATION = {
    "encrypted": (True, False, False),
    "plain": (False, False, False),
    "fake-encrypted": (False, False, False),
    "literal": (False, False, False),
    "securejoin-vc": (False, True, False),
    "securejoin-vg": (False, True, False),
    "securejoin-vc-fake": (False, False, False),
    "mailer-daemon": (False, False, True),
    "asm": (False, False, False),
    "mdn": (False, False, False),
}


def make(mails, kind: str) -> bytes:
    from_addr = f"MAILER-DAEMON@{DOMAIN}" if kind == "mailer-daemon" else SENDER
    return mails.make(kind, from_addr=from_addr, to_addr=RECIPIENT)


@pytest.mark.parametrize("kind", sorted(CLASSIFICATION))
def test_each_kind_of_mail_is_classified(mails, kind):
    msg = parse_message(make(mails, kind))
    expected = CLASSIFICATION[kind]
    actual = (check_encrypted(msg, outgoing=True), is_securejoin(msg), is_mailer_daemon_report(msg, from_address(msg)))
    assert actual == expected


OUTGOING = {
    "encrypted": "250",
    "securejoin-vc": "250",
    "securejoin-vg": "250",
    "plain": "523",
    "fake-encrypted": "523",
    "literal": "523",
    "securejoin-vc-fake": "523",
    "mdn": "523",
    "asm": "523",  # not self-sent
}


@pytest.mark.parametrize("kind", sorted(OUTGOING))
def test_outgoing_verdict_for_each_kind(mails, kind):
    verdict = check_outgoing(SENDER, [RECIPIENT], make(mails, kind))
    assert verdict.reply.split()[0] == OUTGOING[kind]
    if not verdict.accept:
        assert verdict.reply == REPLY_ENCRYPTION_NEEDED


def test_self_sent_autocrypt_setup_message_passes_outgoing(mails):
    data = mails.make("asm", from_addr=SENDER, to_addr=SENDER)
    verdict = check_outgoing(SENDER, [SENDER.upper()], data)
    assert (verdict.accept, verdict.kind) == (True, "setup-message")


def test_setup_message_to_self_and_others_is_refused(mails):
    data = mails.make("asm", from_addr=SENDER, to_addr=SENDER)
    assert not check_outgoing(SENDER, [SENDER, RECIPIENT], data).accept


def test_outgoing_from_header_must_match_envelope_sender(mails):
    data = mails.make("encrypted", from_addr="forged@chat.example.org")
    verdict = check_outgoing(SENDER, [RECIPIENT], data)
    assert verdict.reply == f"500 Invalid FROM <forged@chat.example.org> for <{SENDER}>"


def test_outgoing_from_comparison_ignores_case(mails):
    data = mails.make("encrypted", from_addr=SENDER.upper())
    assert check_outgoing(SENDER, [RECIPIENT], data).accept


def test_message_without_from_header_is_refused_with_500():
    verdict = check_outgoing(SENDER, [RECIPIENT], b"Subject: hi\r\n\r\nbody\r\n")
    assert verdict.reply.startswith("500 Invalid FROM header")


INCOMING_CLEARTEXT_REFUSED = ["plain", "fake-encrypted", "literal", "securejoin-vc-fake", "mdn", "asm"]


@pytest.mark.parametrize("kind", ["encrypted", "securejoin-vc", "securejoin-vg", "mailer-daemon"])
def test_incoming_accepts_encrypted_securejoin_and_bounces_even_for_strict_recipients(mails, kind):
    data = make(mails, kind)
    from_addr = f"MAILER-DAEMON@{DOMAIN}" if kind == "mailer-daemon" else SENDER
    verdict = check_incoming(from_addr, [RECIPIENT], data, accepts_cleartext=lambda rcpt: False)
    assert verdict.accept


@pytest.mark.parametrize("kind", INCOMING_CLEARTEXT_REFUSED)
def test_incoming_cleartext_depends_on_every_recipient(mails, kind):
    data = make(mails, kind)
    strict = {"strict@chat.example.org"}
    ok = check_incoming(SENDER, [RECIPIENT], data, lambda rcpt: rcpt not in strict)
    refused = check_incoming(SENDER, [RECIPIENT, *strict], data, lambda rcpt: rcpt not in strict)
    assert ok.accept
    assert (refused.accept, refused.reply) == (False, REPLY_ENCRYPTION_NEEDED)


def test_incoming_sender_mismatch_is_passed_on_with_null_sender(mails):
    data = mails.make("encrypted", from_addr=SENDER)
    verdict = check_incoming("bounces+srs=x@forwarder.example", [RECIPIENT], data, lambda r: False)
    assert (verdict.accept, verdict.reinject_from) == (True, "")
    same = check_incoming(SENDER.upper(), [RECIPIENT], data, lambda r: False)
    assert same.reinject_from == SENDER.upper()


def test_armor_version_header_is_refused_outgoing_and_tolerated_incoming(openpgp):
    binary = openpgp.binary(openpgp.encrypt("hi"))
    text = armor(binary, headers=("Version: ProtonMail",))
    assert not check_armored_payload(text, outgoing=True)
    assert check_armored_payload(text, outgoing=False)
    assert check_armored_payload(armor(binary), outgoing=True)


def test_other_armor_headers_are_refused(openpgp):
    text = armor(openpgp.binary(openpgp.encrypt("hi")), headers=("Comment: hello",))
    assert not check_armored_payload(text, outgoing=False)


@pytest.mark.parametrize("crlfs", [0, 1, 2, 3])
def test_trailing_line_breaks_after_armor_are_ignored(openpgp, crlfs):
    text = armor(openpgp.binary(openpgp.encrypt("hi"))).rstrip("\r\n") + "\r\n" * crlfs
    assert check_armored_payload(text, outgoing=True)


def test_armor_without_checksum_is_accepted(openpgp):
    assert check_armored_payload(armor(openpgp.binary(openpgp.encrypt("hi")), checksum=False), outgoing=True)


def test_payload_in_lf_line_endings_is_accepted(openpgp):
    text = armor(openpgp.binary(openpgp.encrypt("hi"))).replace("\r\n", "\n")
    assert check_armored_payload(text, outgoing=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "HELLOWORLD",
        "-----BEGIN PGP MESSAGE-----\r\n\r\n=njUN\r\n-----END PGP MESSAGE-----\r\n",
        "-----BEGIN PGP MESSAGE-----\r\n\r\nHELLOWORLD\r\n-----END PGP MESSAGE-----\r\n",
        "-----BEGIN PGP MESSAGE-----\r\n\r\n!!not*base64!!\r\n=njUN\r\n-----END PGP MESSAGE-----\r\n",
        "-----BEGIN PGP MESSAGE-----\r\n\r\nwU4D6exyPan3apQSAQdA\r\n",
    ],
)
def test_garbage_payloads_are_not_encrypted(text):
    assert not check_armored_payload(text, outgoing=False)


def test_stray_padding_inside_base64_is_refused(openpgp):
    lines = armor(openpgp.binary(openpgp.encrypt("hi"))).split("\r\n")
    lines.insert(-3, "=")  # before the checksum line
    assert not check_armored_payload("\r\n".join(lines), outgoing=False)


def new_packet(tag: int, body: bytes) -> bytes:
    assert len(body) < 192
    return bytes([0xC0 | tag, len(body)]) + body


def old_packet(tag: int, body: bytes, length_type: int = 0) -> bytes:
    size = 1 << length_type
    return bytes([0x80 | (tag << 2) | length_type]) + len(body).to_bytes(size, "big") + body


def split_packets(binary: bytes) -> list[tuple[int, bytes]]:
    """Split a pgpy-made message (new format, one-octet lengths) into (tag, body)."""
    packets, pos = [], 0
    while pos < len(binary):
        tag, length = binary[pos] & 0x3F, binary[pos + 1]
        assert length < 192, "test helper handles one-octet lengths only"
        packets.append((tag, binary[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    return packets


def test_pgpy_message_has_two_pkesk_and_one_seipd(openpgp):
    binary = openpgp.binary(openpgp.encrypt("hi"))
    assert [tag for tag, _ in split_packets(binary)] == [1, 1, 18]
    assert check_openpgp_packets(binary)


@pytest.mark.parametrize("length_type", [0, 1, 2])
def test_old_format_session_key_packets_are_accepted(openpgp, length_type):
    packets = split_packets(openpgp.binary(openpgp.encrypt("hi")))
    rewritten = b"".join(old_packet(tag, body, length_type) for tag, body in packets[:-1])
    rewritten += new_packet(*packets[-1])
    assert check_openpgp_packets(rewritten)
    assert check_armored_payload(armor(rewritten), outgoing=True)


def test_old_format_indeterminate_length_runs_to_the_end_and_cannot_be_seipd():
    # Old-format tags have four bits, so tag 18 (SEIPD) cannot be written
    # this way: an indeterminate-length packet always ends the data unencrypted.
    data = new_packet(1, b"k" * 10) + bytes([0x80 | (11 << 2) | 3]) + b"literal data"
    assert not check_openpgp_packets(data)


def test_partial_body_lengths_are_accepted(openpgp):
    binary = openpgp.binary(openpgp.encrypt(secrets.token_hex(1500)))
    *keys, (seipd_tag, seipd) = _split_with_long_lengths(binary)
    assert seipd_tag == 18 and len(seipd) > 1024
    # 512-byte partial chunk, another 512, then the rest with a 2-octet length.
    rest = seipd[1024:]
    assert 192 <= len(rest) < 8384
    body = bytes([0xE9]) + seipd[:512] + bytes([0xE9]) + seipd[512:1024]
    body += bytes([((len(rest) - 192) >> 8) + 192, (len(rest) - 192) & 0xFF]) + rest
    data = b"".join(new_packet(tag, key) for tag, key in keys) + bytes([0xC0 | 18]) + body
    assert check_openpgp_packets(data)


def _split_with_long_lengths(binary: bytes) -> list[tuple[int, bytes]]:
    packets, pos = [], 0
    while pos < len(binary):
        tag, first = binary[pos] & 0x3F, binary[pos + 1]
        if first < 192:
            start, length = pos + 2, first
        elif first < 224:
            start, length = pos + 3, ((first - 192) << 8) + binary[pos + 2] + 192
        else:
            assert first == 255
            start, length = pos + 6, int.from_bytes(binary[pos + 2 : pos + 6], "big")
        packets.append((tag, binary[start : start + length]))
        pos = start + length
    return packets


def test_partial_length_chunk_past_the_end_is_refused():
    data = new_packet(1, b"k" * 10) + bytes([0xC0 | 18, 0xE9]) + b"x" * 100
    assert not check_openpgp_packets(data)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (bytes([0xC1]), "truncated header"),
        (bytes([0xC1, 0xC5]), "truncated two-octet length"),
        (bytes([0xC1, 0xFF, 0, 0]), "truncated five-octet length"),
        (bytes([0x85]), "truncated old-format length"),
        (new_packet(1, b"k" * 10) + new_packet(18, b"x" * 20)[:-1], "last packet runs past the end"),
        (new_packet(1, b"k" * 10), "no SEIPD at the end"),
        (new_packet(11, b"bHello world!"), "literal data"),
        (new_packet(1, b"k") + new_packet(11, b"x") + new_packet(18, b"y"), "literal before SEIPD"),
        (new_packet(9, b"x" * 20), "old SED packet"),
        (new_packet(1, b"k") + new_packet(20, b"x" * 20), "AEAD packet"),
        (new_packet(18, b"x") + new_packet(18, b"y"), "two SEIPD packets"),
        (b"\x00\x01\x02", "bit 7 clear"),
    ],
)
def test_malformed_or_unencrypted_packet_sequences_are_refused(data, why):
    assert not check_openpgp_packets(data), why


def test_skesk_before_seipd_is_encrypted(openpgp):
    binary = openpgp.binary(openpgp.encrypt_with_passphrase("secret", "pass"))
    assert check_openpgp_packets(binary)


def test_multipart_encrypted_needs_exactly_two_parts(openpgp):
    armored = openpgp.armored(openpgp.encrypt("hi"))
    data = pgp_mime(f"From: <{SENDER}>\nTo: <{RECIPIENT}>\nSubject: x\n", armored)
    assert check_encrypted(parse_message(data), outgoing=True)
    only_version = data.split(b"--pgpmime-boundary\r\nContent-Type: application/octet-stream")[0]
    only_version += b"--pgpmime-boundary--\r\n"
    assert not check_encrypted(parse_message(only_version), outgoing=True)
    third = data.replace(
        b"--pgpmime-boundary--",
        b"--pgpmime-boundary\r\nContent-Type: text/plain\r\n\r\nextra\r\n--pgpmime-boundary--",
    )
    assert not check_encrypted(parse_message(third), outgoing=True)


def test_base64_transfer_encoded_payload_part_is_decoded(openpgp):
    armored = openpgp.armored(openpgp.encrypt("hi"))
    data = pgp_mime(f"From: <{SENDER}>\nSubject: x\n", armored)
    encoded = base64.encodebytes(armored.encode()).replace(b"\n", b"\r\n")
    data = data.replace(armored.rstrip().encode(), encoded.rstrip())
    data = data.replace(
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n',
        b'Content-Disposition: inline; filename="encrypted.asc"\r\nContent-Transfer-Encoding: base64\r\n',
    )
    assert check_encrypted(parse_message(data), outgoing=True)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\xff\xfe garbage", b"From: <<<\r\n\r\n", b"Content-Type: multipart/encrypted\r\n\r\n--x"],
)
def test_checks_never_raise_on_garbage(data):
    assert not check_outgoing(SENDER, [RECIPIENT], data).accept
    assert not check_incoming(SENDER, [RECIPIENT], data, lambda r: False).accept


# --- property-based ----------------------------------------------------------

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(st.binary(max_size=4000))
def test_checks_never_raise_on_arbitrary_bytes(data):
    assert check_outgoing(SENDER, [RECIPIENT], data).reply[:3] in ("250", "500", "523")
    assert check_incoming(SENDER, [RECIPIENT], data, lambda rcpt: False).reply[:3] in ("250", "500", "523")


@PROPERTY_SETTINGS
@given(st.data())
def test_mutated_encrypted_mail_never_raises(mails, data):
    original = bytearray(make(mails, "encrypted"))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(original) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            original[pos] ^= data.draw(st.integers(1, 255))
        elif action == "delete":
            del original[pos : pos + data.draw(st.integers(1, 200))]
        else:
            original[pos:pos] = data.draw(st.binary(min_size=1, max_size=20))
        if not original:
            break
    verdict = check_outgoing(SENDER, [RECIPIENT], bytes(original))
    assert verdict.reply[:3] in ("250", "500", "523")


def _new_header(tag: int, length: int, encoding: str) -> tuple[bytes, bool]:
    """A packet header for ``length`` body bytes; (header, usable) in the given encoding."""
    if encoding == "new1" and length < 192:
        return bytes([0xC0 | tag, length]), True
    if encoding == "new2" and 192 <= length < 8384:
        value = length - 192
        return bytes([0xC0 | tag, (value >> 8) + 192, value & 0xFF]), True
    if encoding == "old" and tag < 16:
        if length < 256:
            return bytes([0x80 | (tag << 2), length]), True
        return bytes([0x80 | (tag << 2) | 1]) + length.to_bytes(2, "big"), True
    return bytes([0xC0 | tag, 0xFF]) + length.to_bytes(4, "big"), True


@st.composite
def packet_sequences(draw) -> tuple[bytes, bool]:
    """Random OpenPGP packet sequences and whether §5.4 calls them encrypted.

    The oracle is independent of the implementation: only the list of tags
    and whether the bytes were cut short decide it.
    """
    if draw(st.booleans()):  # aim at the accepted shape, so both outcomes are explored
        tags = draw(st.lists(st.sampled_from([1, 3]), max_size=4)) + [18]
    else:
        tags = draw(st.lists(st.sampled_from([1, 3, 18, 11, 9, 20, 2, 8]), min_size=0, max_size=5))
    out = b""
    last_body = 0
    indeterminate = False
    for index, tag in enumerate(tags):
        body = draw(st.binary(max_size=300))
        last_body = len(body)
        last = index == len(tags) - 1
        encoding = draw(st.sampled_from(["new1", "new2", "new5", "old", "partial"]))
        if encoding == "partial" and len(body) >= 4:
            # Partial body lengths: chunks of 2^k bytes, then a final length.
            chunk = 1 << draw(st.integers(0, 2))
            out += bytes([0xC0 | tag, 0xE0 | chunk.bit_length() - 1]) + body[:chunk]
            rest = body[chunk:]
            out += _new_header(tag, len(rest), "new5")[0][1:] + rest
        elif encoding == "old" and last and tag < 16 and draw(st.booleans()):
            out += bytes([0x80 | (tag << 2) | 3]) + body  # indeterminate length: up to the end
            indeterminate = True
        else:
            out += _new_header(tag, len(body), encoding)[0] + body
    # An SEIPD packet without a body carries nothing encrypted.
    valid = bool(tags) and tags[-1] == 18 and last_body > 0 and all(tag in (1, 3) for tag in tags[:-1])
    # Truncation only inside the last packet's body, where it always breaks the structure;
    # cutting whole packets off could leave another valid sequence behind.
    cut = draw(st.sampled_from([0, 0, 0, 1, 2, 3])) if last_body and not indeterminate else 0
    cut = min(cut, last_body)
    if cut:
        out = out[:-cut]
        valid = False
    return out, valid


@PROPERTY_SETTINGS
@given(packet_sequences())
def test_packet_walker_agrees_with_the_structure_rules(case):
    binary, valid = case
    assert check_openpgp_packets(binary) == valid


MIME_TYPES = [
    "application/pgp-encrypted",
    "application/octet-stream",
    "text/plain",
    "multipart/mixed",
    "Application/PGP-Encrypted",
    "APPLICATION/octet-stream",
]

WANTED_TYPES = (
    ["application/pgp-encrypted", "Application/PGP-Encrypted"],
    ["application/octet-stream", "APPLICATION/octet-stream"],
)


@st.composite
def mime_trees(draw, payload: str) -> tuple[bytes, bool]:
    """Random MIME messages around ``payload`` and whether §5.4 calls them encrypted."""
    aim = draw(st.booleans())  # aim at the accepted shape, so both outcomes are explored
    encrypted_types = ["multipart/encrypted", "Multipart/Encrypted"]
    top = draw(
        st.sampled_from(encrypted_types if aim else encrypted_types + ["multipart/mixed", "text/plain"])
    )
    n_parts = 2 if aim else draw(st.integers(0, 3))
    parts, valid_parts = [], []
    for index in range(n_parts):
        ctype = draw(st.sampled_from(MIME_TYPES))
        if aim and draw(st.integers(0, 3)):
            ctype = draw(st.sampled_from(WANTED_TYPES[index]))
        if ctype.lower() == "multipart/mixed":
            body = "--inner\r\nContent-Type: text/plain\r\n\r\nx\r\n--inner--\r\n"
            parts.append(f'Content-Type: multipart/mixed; boundary="inner"\r\n\r\n{body}')
            valid_parts.append(False)
            continue
        body = draw(st.sampled_from(["Version: 1", "Version: 2", "", payload]))
        if aim and draw(st.integers(0, 3)):
            body = "Version: 1" if index == 0 else payload
        parts.append(f"Content-Type: {ctype}\r\n\r\n{body}\r\n")
        wanted = (
            ("application/pgp-encrypted", "Version: 1")
            if index == 0
            else ("application/octet-stream", payload)
        )
        valid_parts.append(ctype.lower() == wanted[0] and body == wanted[1])
    if top.lower().startswith("multipart/"):
        body = "".join(f"--outer\r\n{part}" for part in parts) + "--outer--\r\n"
        head = f'Content-Type: {top}; boundary="outer"\r\n'
    else:
        body, head = payload + "\r\n", f"Content-Type: {top}\r\n"
    message = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: x\r\n{head}\r\n{body}"
    valid = top.lower() == "multipart/encrypted" and n_parts == 2 and all(valid_parts)
    return message.encode(), valid


@pytest.fixture(scope="module")
def real_payload(openpgp) -> str:
    return openpgp.armored(openpgp.encrypt("property test")).rstrip()


@PROPERTY_SETTINGS
@given(st.data())
def test_only_the_pgp_mime_structure_is_accepted_as_encrypted(real_payload, data):
    message, valid = data.draw(mime_trees(real_payload))
    msg = parse_message(message)
    assert check_encrypted(msg, outgoing=True) == valid
    assert (check_outgoing(SENDER, [RECIPIENT], message).kind == "encrypted") == valid


@PROPERTY_SETTINGS
@given(packet_sequences(), st.booleans(), st.integers(0, 3))
def test_armored_packets_are_judged_like_the_binary(case, checksum, trailing):
    binary, valid = case
    text = armor(binary, checksum=checksum) + "\r\n" * trailing
    assert check_armored_payload(text, outgoing=True) == (valid and bool(binary))


# --- From and Sender: exactly one header, exactly one mailbox ---------------


def _with_headers(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


def test_two_from_headers_are_refused_even_with_the_senders_own_first(mails):
    data = mails.make("encrypted", from_addr=SENDER)
    data = _with_headers(data, b"To: ", b"From: <victim@chat.example.org>\r\nTo: ")
    verdict = check_outgoing(SENDER, [RECIPIENT], data)
    assert verdict.reply == "500 Invalid FROM header: expected one from header, found 2"
    assert not check_incoming(SENDER, [RECIPIENT], data, lambda rcpt: True).accept


@pytest.mark.parametrize(
    "from_value",
    [
        f"<{SENDER}>, <victim@{DOMAIN}>",
        f"{SENDER} <victim@{DOMAIN}>",
        f"{SENDER}, victim@{DOMAIN}",
        f"<{SENDER}> <victim@{DOMAIN}>",
        f"<{SENDER}>,",
        "undisclosed-recipients:;",
        f"friends: <{SENDER}>;",
    ],
)
def test_from_header_must_hold_exactly_one_mailbox(mails, from_value):
    data = _with_headers(mails.make("encrypted", from_addr=SENDER), f"From: <{SENDER}>".encode(), f"From: {from_value}".encode())
    verdict = check_outgoing(SENDER, [RECIPIENT], data)
    assert not verdict.accept
    assert verdict.reply.startswith("500 Invalid FROM")


@pytest.mark.parametrize(
    "from_value",
    [f"Sender Name <{SENDER}>", f'"Name, with comma" <{SENDER}>', f"{SENDER} (comment)", SENDER, f'"sender"@{DOMAIN}'],
)
def test_the_forms_of_ones_own_address_are_accepted(mails, from_value):
    data = _with_headers(mails.make("encrypted", from_addr=SENDER), f"From: <{SENDER}>".encode(), f"From: {from_value}".encode())
    assert check_outgoing(SENDER, [RECIPIENT], data).accept


def test_sender_header_must_be_the_envelope_sender_too(mails):
    base = mails.make("encrypted", from_addr=SENDER)
    own = _with_headers(base, b"To: ", f"Sender: <{SENDER}>\r\nTo: ".encode())
    assert check_outgoing(SENDER, [RECIPIENT], own).accept
    other = _with_headers(base, b"To: ", f"Sender: <victim@{DOMAIN}>\r\nTo: ".encode())
    assert check_outgoing(SENDER, [RECIPIENT], other).reply == f"500 Invalid Sender <victim@{DOMAIN}> for <{SENDER}>"
    two = _with_headers(own, b"To: ", f"Sender: <victim@{DOMAIN}>\r\nTo: ".encode())
    assert check_outgoing(SENDER, [RECIPIENT], two).reply.startswith("500 Invalid Sender header")
    listed = _with_headers(base, b"To: ", f"Sender: <{SENDER}>, <victim@{DOMAIN}>\r\nTo: ".encode())
    assert not check_outgoing(SENDER, [RECIPIENT], listed).accept


@pytest.mark.parametrize("addr", ["user@[192.0.2.1]", "user@[IPv6:2001:db8::1]"])
def test_users_of_an_ip_literal_relay_can_send(mails, addr):
    data = mails.make("encrypted", from_addr=addr, to_addr="peer@[192.0.2.9]")
    verdict = check_outgoing(addr, ["peer@[192.0.2.9]"], data)
    assert (verdict.accept, verdict.from_addr) == (True, addr)


def test_ip_literal_sender_is_read_as_one_address_by_the_incoming_check(mails):
    data = mails.make("securejoin-vc", from_addr="x@[192.0.2.1]")
    verdict = check_incoming("x@[192.0.2.1]", [RECIPIENT], data, lambda rcpt: False)
    assert (verdict.accept, verdict.from_addr, verdict.reinject_from) == (True, "x@[192.0.2.1]", "x@[192.0.2.1]")


# --- bounces ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", "No", "", "  no ; reason", "yes please"])
def test_auto_submitted_without_an_automatic_value_is_not_a_bounce(mails, value):
    data = mails.make("mailer-daemon", from_addr=f"MAILER-DAEMON@{DOMAIN}", to_addr=RECIPIENT)
    data = _with_headers(data, b"Auto-Submitted: auto-replied", f"Auto-Submitted: {value}".encode())
    verdict = check_incoming(f"MAILER-DAEMON@{DOMAIN}", [RECIPIENT], data, lambda rcpt: False)
    assert (verdict.accept, verdict.reply) == (False, REPLY_ENCRYPTION_NEEDED)


@pytest.mark.parametrize("value", ["auto-replied", "auto-generated", "Auto-Generated (by the MTA)"])
def test_automatic_auto_submitted_values_make_a_bounce(mails, value):
    data = mails.make("mailer-daemon", from_addr=f"MAILER-DAEMON@{DOMAIN}", to_addr=RECIPIENT)
    data = _with_headers(data, b"Auto-Submitted: auto-replied", f"Auto-Submitted: {value}".encode())
    assert check_incoming("", [RECIPIENT], data, lambda rcpt: False).kind == "mailer-daemon"


def test_a_bounce_needs_the_delivery_status_structure(mails):
    data = mails.make("mailer-daemon", from_addr=f"MAILER-DAEMON@{DOMAIN}", to_addr=RECIPIENT)
    no_status_part = data.replace(b"Content-Type: message/delivery-status", b"Content-Type: text/plain")
    other_report = data.replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    for variant in (no_status_part, other_report):
        assert not check_incoming("", [RECIPIENT], variant, lambda rcpt: False).accept


# --- MIME bounds -----------------------------------------------------------


def _multipart(parts: int) -> bytes:
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts))
    return (
        f"From: <{SENDER}>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".encode() + body + b"--b--\r\n"
    )


def _nested(depth: int) -> bytes:
    head = f"From: <{SENDER}>\r\n".encode()
    opening = b"".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode() for i in range(depth)
    )
    closing = b"".join(f"\r\n--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nx" + closing


def test_a_message_with_too_many_mime_parts_is_refused_with_a_clear_5xx():
    from chatmaild.mimecheck import MAX_MIME_PARTS

    assert check_outgoing(SENDER, [RECIPIENT], _multipart(MAX_MIME_PARTS - 2)).reply == REPLY_ENCRYPTION_NEEDED
    verdict = check_outgoing(SENDER, [RECIPIENT], _multipart(MAX_MIME_PARTS * 100))
    assert verdict.reply == f"554 5.6.0 Message has more than {MAX_MIME_PARTS} MIME parts"


def test_mime_parts_nested_too_deeply_are_refused_with_a_clear_5xx():
    from chatmaild.mimecheck import MAX_MIME_DEPTH

    assert check_outgoing(SENDER, [RECIPIENT], _nested(MAX_MIME_DEPTH - 1)).reply == REPLY_ENCRYPTION_NEEDED
    for depth in (MAX_MIME_DEPTH + 1, 900):
        verdict = check_incoming(SENDER, [RECIPIENT], _nested(depth), lambda rcpt: True)
        assert verdict.reply == f"554 5.6.0 MIME parts nested deeper than {MAX_MIME_DEPTH} levels"


# passthrough_senders / passthrough_recipients, as the reference relay's filter had them.
PASS_RECIPIENTS = ("privacy@chat.example.org", "@partner.example")


@pytest.mark.parametrize(("rcpts", "accepted"), [
    (["privacy@chat.example.org"], True),
    (["PRIVACY@Chat.Example.org"], True),
    (["anyone@partner.example"], True),
    (["privacy@chat.example.org", "x@partner.example"], True),
    (["privacy@chat.example.org", RECIPIENT], False),  # every recipient must match
    (["privacy2@chat.example.org"], False),
    (["x@notpartner.example"], False),
    (["x@sub.partner.example.evil"], False),
])
def test_cleartext_passes_outgoing_only_when_every_recipient_is_a_passthrough_recipient(mails, rcpts, accepted):
    data = mails.make("plain", from_addr=SENDER, to_addr=rcpts[0])
    verdict = check_outgoing(SENDER, rcpts, data, passthrough_recipients=PASS_RECIPIENTS)
    assert verdict.accept == accepted
    assert verdict.kind == ("passthrough-recipients" if accepted else "cleartext")


def test_a_passthrough_sender_may_send_cleartext_to_anyone_and_others_may_not(mails):
    data = mails.make("plain", from_addr=SENDER, to_addr=RECIPIENT)
    verdict = check_outgoing(SENDER, [RECIPIENT], data, passthrough_senders=(SENDER.lower(),))
    assert (verdict.accept, verdict.kind) == (True, "passthrough-sender")
    assert check_outgoing(SENDER, [RECIPIENT], data, passthrough_senders=("other@chat.example.org",)).reply \
        == REPLY_ENCRYPTION_NEEDED


def test_a_passthrough_sender_still_cannot_forge_its_from(mails):
    data = mails.make("plain", from_addr="victim@chat.example.org", to_addr=RECIPIENT)
    verdict = check_outgoing(SENDER, [RECIPIENT], data, passthrough_senders=(SENDER,),
                             passthrough_recipients=("@chat.example.org",))
    assert not verdict.accept and verdict.reply.startswith("500 Invalid FROM")

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
    actual = (check_encrypted(msg, outgoing=True), is_securejoin(msg), is_mailer_daemon_report(msg))
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

"""Test plugin: factory fixtures for configs and real mail.

Messages are built here, not stored as hand-written strings: the encrypted
ones are produced by a real OpenPGP implementation (pgpy), so the checks are
tested against what clients actually send. pgpy is used only in this file,
so it can be swapped out in one place.
"""

from __future__ import annotations

import base64
import os
import tempfile
import textwrap
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmaild.config import Config, read_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    from pgpy.constants import (
        CompressionAlgorithm,
        EllipticCurveOID,
        HashAlgorithm,
        KeyFlags,
        PubKeyAlgorithm,
        SymmetricKeyAlgorithm,
    )

DOMAIN = "chat.example.org"

# Hypothesis caches (constants, Unicode tables) outside the source tree, not in ./.hypothesis.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "chatmaild-hypothesis"))


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the counts of the hostile-input suite when it ran."""
    import sys

    hostile = sys.modules.get("test_hostile")
    if hostile is not None and hostile.TALLY["cases"]:
        terminalreporter.write_line(hostile.summary())


# --- configuration -------------------------------------------------------


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Write a real chatmail.ini with the given overrides and read it back.

    Mailboxes, the nocreate file and the blocklist live under the test's temporary
    directory unless overridden. The load limit for new accounts is out of reach unless a
    test sets it: a busy test machine must not decide a test about something else (the
    limit itself is tested with an injected load, test_syslimits.py).
    """

    def make(mail_domain: str = DOMAIN, **overrides: object) -> Config:
        params: dict[str, object] = {
            "mail_domain": mail_domain,
            "mailboxes_dir": tmp_path / "mail",
            "nocreate_file": tmp_path / "nocreate",
            "blocklist_file": tmp_path / "blocklist",
            "max_load_1m": 1000,
        }
        params.update(overrides)
        lines = ["[params]"] + [f"{key} = {value}" for key, value in params.items()]
        path = tmp_path / "chatmail.ini"
        path.write_text("\n".join(lines) + "\n")
        return read_config(path)

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


# --- OpenPGP -------------------------------------------------------------


def _new_key(uid: str) -> pgpy.PGPKey:
    key = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
    key.add_uid(
        pgpy.PGPUID.new(uid),
        usage={KeyFlags.Sign, KeyFlags.Certify},
        hashes=[HashAlgorithm.SHA256],
        ciphers=[SymmetricKeyAlgorithm.AES128],
        compression=[CompressionAlgorithm.Uncompressed],
    )
    subkey = pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)
    key.add_subkey(subkey, usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
    return key


@pytest.fixture(scope="session")
def openpgp_keys() -> tuple[pgpy.PGPKey, pgpy.PGPKey]:
    """Two fresh keys, as sender and recipient would have."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _new_key("sender@chat.example.org"), _new_key("recipient@chat.example.org")


class OpenPGP:
    """Makes real OpenPGP payloads, armored and binary."""

    def __init__(self, keys: tuple[pgpy.PGPKey, pgpy.PGPKey]) -> None:
        self.keys = keys

    def encrypt(self, text: str) -> pgpy.PGPMessage:
        """Encrypt to both keys with one session key: two PKESK packets and one SEIPD."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            message = pgpy.PGPMessage.new(text)
            cipher = SymmetricKeyAlgorithm.AES128
            session_key = cipher.gen_key()
            for key in self.keys:
                message = key.pubkey.encrypt(message, cipher=cipher, sessionkey=session_key)
            return message

    def encrypt_with_passphrase(self, text: str, passphrase: str) -> pgpy.PGPMessage:
        """Symmetric encryption (SKESK + SEIPD), as in an Autocrypt Setup Message."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pgpy.PGPMessage.new(text).encrypt(passphrase)

    def literal(self, text: str) -> pgpy.PGPMessage:
        """An unencrypted OpenPGP message: one Literal Data packet."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pgpy.PGPMessage.new(text)

    @staticmethod
    def binary(message: pgpy.PGPMessage) -> bytes:
        return bytes(message)

    @staticmethod
    def armored(message: pgpy.PGPMessage) -> str:
        return armor(bytes(message))


@pytest.fixture(scope="session")
def openpgp(openpgp_keys: tuple[pgpy.PGPKey, pgpy.PGPKey]) -> OpenPGP:
    return OpenPGP(openpgp_keys)


def crc24(data: bytes) -> int:
    """The armor checksum of RFC 4880 section 6.1."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armor(binary: bytes, headers: tuple[str, ...] = (), checksum: bool = True) -> str:
    """ASCII-armor ``binary`` as a PGP MESSAGE, with CRLF line endings."""
    lines = ["-----BEGIN PGP MESSAGE-----", *headers, ""]
    lines += textwrap.wrap(base64.b64encode(binary).decode(), 64)
    if checksum:
        lines.append("=" + base64.b64encode(crc24(binary).to_bytes(3, "big")).decode())
    lines.append("-----END PGP MESSAGE-----")
    return "\r\n".join(lines) + "\r\n"


# --- mail ----------------------------------------------------------------


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _headers(from_addr: str, to_addr: str, subject: str, extra: str = "") -> str:
    return (
        f"From: <{from_addr}>\n"
        f"To: <{to_addr}>\n"
        f"Subject: {subject}\n"
        "Date: Mon, 01 Jun 2026 12:00:00 +0000\n"
        f"Message-ID: <{uuid.uuid4()}@{DOMAIN}>\n"
        "MIME-Version: 1.0\n"
        "Chat-Version: 1.0\n"
        f"{extra}"
    )


def pgp_mime(headers: str, armored: str, boundary: str = "pgpmime-boundary") -> bytes:
    """Wrap an armored payload in an RFC 3156 multipart/encrypted message."""
    body = (
        f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\n'
        f' boundary="{boundary}"\n'
        "\n"
        f"--{boundary}\n"
        "Content-Type: application/pgp-encrypted\n"
        "Content-Description: PGP/MIME version identification\n"
        "\n"
        "Version: 1\n"
        "\n"
        f"--{boundary}\n"
        'Content-Type: application/octet-stream; name="encrypted.asc"\n'
        "Content-Description: OpenPGP encrypted message\n"
        'Content-Disposition: inline; filename="encrypted.asc"\n'
        "\n"
        f"{armored.rstrip()}\n"
        "\n"
        f"--{boundary}--\n"
    )
    return _crlf(headers + body)


class MailFactory:
    """Builds the kinds of mail a relay sees, as raw CRLF bytes."""

    KINDS = (
        "encrypted",
        "plain",
        "fake-encrypted",
        "literal",
        "securejoin-vc",
        "securejoin-vg",
        "securejoin-vc-fake",
        "mailer-daemon",
        "asm",
        "mdn",
    )

    def __init__(self, openpgp: OpenPGP) -> None:
        self.openpgp = openpgp

    def make(
        self,
        kind: str,
        from_addr: str = f"sender@{DOMAIN}",
        to_addr: str = f"recipient@{DOMAIN}",
        subject: str = "...",
    ) -> bytes:
        method = getattr(self, "_" + kind.replace("-", "_"))
        return method(from_addr, to_addr, subject)

    def _encrypted(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        headers = _headers(from_addr, to_addr, subject, "Autocrypt: addr=sender; keydata=AAAA\n")
        return pgp_mime(headers, self.openpgp.armored(self.openpgp.encrypt("Hello, this is secret.")))

    def _literal(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        headers = _headers(from_addr, to_addr, subject)
        return pgp_mime(headers, self.openpgp.armored(self.openpgp.literal("Hello world!")))

    def _plain(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        headers = _headers(from_addr, to_addr, subject, "Autocrypt: addr=sender; keydata=AAAA\n")
        return _crlf(headers + "Content-Type: text/plain; charset=utf-8\n\nHi!\n")

    def _fake_encrypted(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        headers = _headers(from_addr, to_addr, subject)
        body = "-----BEGIN PGP MESSAGE-----\n\nHi!\n\n-----END PGP MESSAGE-----\n"
        return _crlf(headers + "Content-Type: text/plain; charset=utf-8\n\n" + body)

    def _securejoin(self, from_addr: str, to_addr: str, subject: str, step: str, text: str) -> bytes:
        headers = _headers(
            from_addr,
            to_addr,
            subject,
            f"Secure-Join: {step}\nSecure-Join-Invitenumber: 9gXnVTDqVpPxCzDp\n",
        )
        body = (
            'Content-Type: multipart/mixed; boundary="sj-boundary"\n'
            "\n"
            "--sj-boundary\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "\n"
            f"{text}\n"
            "--sj-boundary--\n"
        )
        return _crlf(headers + body)

    def _securejoin_vc(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        return self._securejoin(from_addr, to_addr, subject, "vc-request", "Secure-Join: vc-request")

    def _securejoin_vg(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        return self._securejoin(from_addr, to_addr, subject, "vg-request", "Secure-Join: vg-request")

    def _securejoin_vc_fake(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        return self._securejoin(from_addr, to_addr, subject, "vc-request", "Buy viagra!")

    def _report(self, from_addr: str, to_addr: str, subject: str, report_type: str, inner: str) -> bytes:
        headers = _headers(from_addr, to_addr, subject, "Auto-Submitted: auto-replied\n")
        body = (
            f'Content-Type: multipart/report; report-type={report_type};\n boundary="report-boundary"\n'
            "\n"
            "--report-boundary\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "\n"
            "This is an automatically generated report.\n"
            "\n"
            "--report-boundary\n"
            f"{inner}"
            "--report-boundary--\n"
        )
        return _crlf(headers + body)

    def _mailer_daemon(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        inner = (
            "Content-Type: message/delivery-status\n"
            "\n"
            "Reporting-MTA: dns; mx.example.net\n"
            "\n"
            f"Final-Recipient: rfc822; {to_addr}\n"
            "Action: failed\n"
            "Status: 5.1.1\n"
            "\n"
        )
        return self._report(
            from_addr, to_addr, "Undelivered Mail Returned to Sender", "delivery-status", inner
        )

    def _mdn(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        inner = (
            "Content-Type: message/disposition-notification\n"
            "\n"
            "Reporting-UA: Delta Chat\n"
            "Original-Message-ID: <original@chat.example.org>\n"
            "Disposition: manual-action/MDN-sent-automatically; displayed\n"
            "\n"
        )
        return self._report(from_addr, to_addr, "Receipt Notification", "disposition-notification", inner)

    def _asm(self, from_addr: str, to_addr: str, subject: str) -> bytes:
        headers = _headers(from_addr, to_addr, "Autocrypt Setup Message", "Autocrypt-Setup-Message: v1\n")
        setup = self.openpgp.armored(
            self.openpgp.encrypt_with_passphrase("-----BEGIN PGP PRIVATE KEY BLOCK-----", "1234-5678")
        )
        body = (
            'Content-Type: multipart/mixed; boundary="asm-boundary"\n'
            "\n"
            "--asm-boundary\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "\n"
            "This is the Autocrypt Setup Message.\n"
            "\n"
            "--asm-boundary\n"
            'Content-Type: application/autocrypt-setup; name="autocrypt-setup-message.html"\n'
            "\n"
            f"<html><body><pre>\n{setup}</pre></body></html>\n"
            "--asm-boundary--\n"
        )
        return _crlf(headers + body)


@pytest.fixture(scope="session")
def mails(openpgp: OpenPGP) -> MailFactory:
    return MailFactory(openpgp)


# --- DKIM ----------------------------------------------------------------


class DkimDomains:
    """Signs mail as other domains would, and plays their DNS for the DKIM keys.

    One RSA key serves every domain; ``lookup_txt`` answers the TXT queries
    for ``<selector>._domainkey.<domain>`` of the domains signed for so far,
    and counts the queries so caching can be tested.
    """

    SELECTOR = "sel1"

    def __init__(self, private_pem: bytes, public_der: bytes) -> None:
        self.private_pem = private_pem
        self.record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
        self.published: dict[str, bytes] = {}
        self.queries: list[str] = []

    def sign(self, data: bytes, domain: str, selector: str = SELECTOR, publish: bool = True) -> bytes:
        """Prepend a DKIM-Signature of ``domain`` (relaxed/relaxed, rsa-sha256) to ``data``."""
        import dkim

        signature = dkim.sign(
            data,
            selector.encode(),
            domain.encode(),
            self.private_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        if publish:
            self.published[f"{selector}._domainkey.{domain}.".lower()] = self.record
        return signature + data

    async def lookup_txt(self, name: str) -> bytes | None:
        self.queries.append(name)
        return self.published.get(name.lower())


@pytest.fixture(scope="session")
def dkim_rsa_key() -> tuple[bytes, bytes]:
    """A 2048-bit RSA key pair: (PKCS#1 private PEM, SubjectPublicKeyInfo DER)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_der


@pytest.fixture
def dkim_domains(dkim_rsa_key: tuple[bytes, bytes]) -> DkimDomains:
    return DkimDomains(*dkim_rsa_key)

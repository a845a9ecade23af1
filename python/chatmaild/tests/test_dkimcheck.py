from __future__ import annotations

import asyncio
import logging

import pytest

from chatmaild.dkimcheck import (
    REPLY_DNS_TEMPORARY,
    REPLY_NO_SIGNATURE,
    REPLY_NO_VALID_SIGNATURE,
    DkimVerifier,
    DnsTemporaryError,
    MAX_SIGNATURES_CHECKED,
    REPLY_IP_LITERAL_MISMATCH,
    REPLY_IP_LITERAL_NO_CLIENT,
    KeyCache,
    client_ip,
    is_ip_literal,
)

REMOTE = "remote.example"
ALICE = f"alice@{REMOTE}"


def check(
    verifier: DkimVerifier, data: bytes, from_addr: str = ALICE, client_address: str | None = None
) -> str | None:
    return asyncio.run(verifier.check(data, from_addr, client_address))


@pytest.fixture
def verifier(dkim_domains) -> DkimVerifier:
    return DkimVerifier(lookup_txt=dkim_domains.lookup_txt)


@pytest.fixture
def mail(mails) -> bytes:
    return mails.make("encrypted", from_addr=ALICE)


def test_valid_signature_of_the_from_domain_is_accepted(verifier, dkim_domains, mail):
    assert check(verifier, dkim_domains.sign(mail, REMOTE)) is None


def test_domain_comparison_ignores_case(verifier, dkim_domains, mail):
    assert (
        check(verifier, dkim_domains.sign(mail, "Remote.EXAMPLE"), from_addr="alice@REMOTE.example") is None
    )


def test_signature_of_another_domain_is_refused(verifier, dkim_domains, mail):
    assert check(verifier, dkim_domains.sign(mail, "other.example")) == REPLY_NO_VALID_SIGNATURE


def test_signature_of_the_parent_domain_is_not_enough(verifier, dkim_domains, mails):
    data = mails.make("encrypted", from_addr="alice@mail.remote.example")
    assert (
        check(verifier, dkim_domains.sign(data, REMOTE), "alice@mail.remote.example")
        == REPLY_NO_VALID_SIGNATURE
    )


def test_unsigned_mail_is_refused(verifier, mail):
    assert check(verifier, mail) == REPLY_NO_SIGNATURE


def test_altered_body_is_refused(verifier, dkim_domains, mail):
    signed = dkim_domains.sign(mail, REMOTE)
    tampered = signed.replace(b"-----END PGP MESSAGE-----", b"-----END PGP MESSAGE-----\r\nPS")
    assert tampered != signed
    assert check(verifier, tampered) == REPLY_NO_VALID_SIGNATURE


def test_altered_signed_header_is_refused(verifier, dkim_domains, mail):
    tampered = dkim_domains.sign(mail, REMOTE).replace(b"Subject: ...", b"Subject: changed")
    assert check(verifier, tampered) == REPLY_NO_VALID_SIGNATURE


def test_one_valid_signature_among_broken_ones_is_enough(verifier, dkim_domains, mail):
    signed = dkim_domains.sign(mail, REMOTE)
    broken = dkim_domains.sign(mail, REMOTE, selector="gone", publish=False)
    both = broken.split(b"\r\n", 1)[0] + b"\r\n" + signed
    assert check(verifier, both) is None


def test_unpublished_key_is_refused(verifier, dkim_domains, mail):
    assert check(verifier, dkim_domains.sign(mail, REMOTE, publish=False)) == REPLY_NO_VALID_SIGNATURE


def test_malformed_signature_header_is_refused(verifier, mail):
    data = b"DKIM-Signature: v=1; this is not a tag list\r\n" + mail
    assert check(verifier, data) == REPLY_NO_VALID_SIGNATURE


IP_LITERAL_CLIENTS = [
    ("[192.0.2.1]", "192.0.2.1"),
    ("[IPv6:2001:db8::1]", "IPV6:2001:db8::1"),
    ("[ipv6:::1]", "IPV6:0:0::1"),
    ("[192.0.2.1]", "IPV6:::ffff:192.0.2.1"),
]


@pytest.mark.parametrize(("domain", "client"), IP_LITERAL_CLIENTS)
def test_ip_literal_from_domain_is_accepted_only_from_that_client(verifier, mails, domain, client):
    data = mails.make("encrypted", from_addr=f"alice@{domain}")
    assert check(verifier, data, f"alice@{domain}", client_address=client) is None


@pytest.mark.parametrize("client", ["192.0.2.2", "IPV6:2001:db8::2", "127.0.0.1"])
@pytest.mark.parametrize("domain", ["[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_ip_literal_from_domain_of_another_client_is_refused(verifier, mails, domain, client):
    data = mails.make("encrypted", from_addr=f"alice@{domain}")
    assert check(verifier, data, f"alice@{domain}", client_address=client) == REPLY_IP_LITERAL_MISMATCH


@pytest.mark.parametrize("client", [None, "", "[UNAVAILABLE]", "[TEMPUNAVAIL]", "IPV6:fe80::1%eth0"])
def test_ip_literal_from_domain_without_a_known_client_is_refused(verifier, mails, client):
    data = mails.make("encrypted", from_addr="alice@[192.0.2.1]")
    assert check(verifier, data, "alice@[192.0.2.1]", client_address=client) == REPLY_IP_LITERAL_NO_CLIENT


def test_xforward_client_addresses_are_read_as_postfix_writes_them():
    assert str(client_ip("IPV6:2001:DB8::1")) == "2001:db8::1"
    assert str(client_ip("ipv6:::ffff:192.0.2.7")) == "192.0.2.7"
    assert client_ip("192.0.2.300") is None


def test_signature_with_a_body_length_tag_is_ignored(verifier, dkim_domains, mail):
    import dkim

    signature = dkim.sign(
        mail,
        b"sel1",
        REMOTE.encode(),
        dkim_domains.private_pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject"],
        length=True,
    )
    assert b" l=" in signature or b";l=" in signature or b"\tl=" in signature
    dkim_domains.published[f"sel1._domainkey.{REMOTE}."] = dkim_domains.record
    # Anything appended to the body would still verify against such a signature.
    replayed = signature + mail + b"\r\nBuy now!\r\n"
    assert check(verifier, replayed) == REPLY_NO_VALID_SIGNATURE
    assert dkim_domains.queries == []


def test_at_most_a_few_signatures_of_the_from_domain_are_checked(verifier, dkim_domains, mail):
    bogus = b"".join(
        f"DKIM-Signature: v=1; a=rsa-sha256; d={REMOTE}; s=s{i}; h=from; bh=AAAA; b=AAAA\r\n".encode()
        for i in range(50)
    )
    assert check(verifier, bogus + mail) == REPLY_NO_VALID_SIGNATURE
    assert len(dkim_domains.queries) == MAX_SIGNATURES_CHECKED


@pytest.mark.parametrize("domain", ["[not an ip]", "192.0.2.1", "[192.0.2.1", "[IPv6:300.1.1.1]"])
def test_only_real_address_literals_count_as_ip_literals(domain):
    assert not is_ip_literal(domain)


def test_temporary_dns_failure_defers_instead_of_refusing(mail, dkim_domains):
    async def failing(name: str) -> bytes | None:
        raise DnsTemporaryError("Timeout")

    verifier = DkimVerifier(lookup_txt=failing)
    assert check(verifier, dkim_domains.sign(mail, REMOTE)) == REPLY_DNS_TEMPORARY


def test_keys_are_cached_between_messages(verifier, dkim_domains, mails):
    for _ in range(3):
        assert check(verifier, dkim_domains.sign(mails.make("encrypted", from_addr=ALICE), REMOTE)) is None
    assert dkim_domains.queries == [f"sel1._domainkey.{REMOTE}."]


def test_failed_signature_with_cached_key_looks_the_key_up_again(verifier, dkim_domains, mail, dkim_rsa_key):
    assert check(verifier, dkim_domains.sign(mail, REMOTE)) is None
    # The domain rotates its key under the same selector; the cache still has the old one.
    from conftest import DkimDomains
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rotated = DkimDomains(
        new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        new_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    dkim_domains.published[f"sel1._domainkey.{REMOTE}."] = rotated.record
    assert check(verifier, rotated.sign(mail, REMOTE)) is None
    assert len(dkim_domains.queries) == 2


def test_key_cache_forgets_the_least_recently_used_name():
    cache = KeyCache(size=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == (True, b"1")
    cache.put("c", b"3")
    assert cache.get("b") == (False, None)
    assert cache.get("a") == (True, b"1")
    assert len(cache) == 2


def test_key_cache_entries_expire():
    now = [0.0]
    cache = KeyCache(max_age=10, clock=lambda: now[0])
    cache.put("a", None)
    assert cache.get("a") == (True, None)
    now[0] = 11
    assert cache.get("a") == (False, None)


def test_message_content_is_not_logged(verifier, dkim_domains, mail, caplog):
    with caplog.at_level(logging.DEBUG):
        check(verifier, dkim_domains.sign(mail, "other.example"))
        check(verifier, mail.replace(b"Subject: ...", b"Subject: ...") + b"x")
    assert "BEGIN PGP" not in caplog.text
    assert "Subject" not in caplog.text


# --- the faster paths inside dkimpy ---------------------------------------------


def _rsa_key(bits: int, exponent: int = 65537):
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=exponent, key_size=bits)


def _pkcs1_signature(private_key, digest_name: str, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    algorithm = hashes.SHA256() if digest_name == "sha256" else hashes.SHA1()
    return private_key.sign(message, padding.PKCS1v15(), algorithm)


def _dkimpy_key(private_key) -> dict[str, int]:
    numbers = private_key.public_key().public_numbers()
    return {"modulus": numbers.n, "publicExponent": numbers.e}


def _pure_verdict(hash_object, signature: bytes, key: dict[str, int]) -> object:
    import dkim.crypto

    try:
        return dkim.crypto.RSASSA_PKCS1_v1_5_verify(hash_object, signature, key)
    except Exception as exc:
        return type(exc)


def _openssl_verdict(hash_object, signature: bytes, key: dict[str, int]) -> object:
    from chatmaild.dkimcheck import rsa_verify_openssl

    try:
        return rsa_verify_openssl(hash_object, signature, key)
    except Exception as exc:
        return type(exc)


def _signature_variants(private_key, digest_name: str) -> list[tuple[str, object, bytes]]:
    """(case, hash object, signature): right, wrong and oddly encoded signatures."""
    import hashlib

    message = b"the signed header block"
    good = _pkcs1_signature(private_key, digest_name, message)
    modulus = private_key.public_key().public_numbers().n
    length = len(good)
    value = int.from_bytes(good, "big")
    flipped = bytearray(good)
    flipped[-1] ^= 1
    plus_modulus = value + modulus
    cases = [
        ("valid", hashlib.new(digest_name, message), good),
        ("other message", hashlib.new(digest_name, b"another header block"), good),
        ("other digest", hashlib.new("sha1" if digest_name == "sha256" else "sha256", message), good),
        ("one bit flipped", hashlib.new(digest_name, message), bytes(flipped)),
        ("leading zero byte added", hashlib.new(digest_name, message), b"\0" + good),
        ("empty", hashlib.new(digest_name, message), b""),
        ("all zero", hashlib.new(digest_name, message), bytes(length)),
        ("all ones", hashlib.new(digest_name, message), b"\xff" * length),
        ("modulus itself", hashlib.new(digest_name, message), modulus.to_bytes(length, "big")),
    ]
    if plus_modulus.bit_length() <= 8 * length:
        wrapped = plus_modulus.to_bytes(length, "big")
        cases.append(("signature plus modulus", hashlib.new(digest_name, message), wrapped))
    if good[0] == 0:
        cases.append(("leading zero byte dropped", hashlib.new(digest_name, message), good[1:]))
    return cases


@pytest.mark.parametrize("bits,exponent", [(1024, 65537), (2048, 65537), (2048, 3), (3072, 65537)])
@pytest.mark.parametrize("digest_name", ["sha256", "sha1"])
def test_openssl_rsa_check_gives_exactly_dkimpys_verdict(bits, exponent, digest_name):
    private_key = _rsa_key(bits, exponent)
    key = _dkimpy_key(private_key)
    verdicts = {}
    for case, hash_object, signature in _signature_variants(private_key, digest_name):
        expected = _pure_verdict(hash_object.copy(), signature, key)
        assert _openssl_verdict(hash_object.copy(), signature, key) == expected, case
        verdicts[case] = expected
    assert verdicts["valid"] is True
    assert verdicts["one bit flipped"] is False


def test_openssl_rsa_check_leaves_keys_it_cannot_take_to_dkimpy():
    import hashlib

    signer = _rsa_key(1024)
    large_modulus = _dkimpy_key(signer)
    odd_keys = [
        ("424 bits", {"modulus": (large_modulus["modulus"] >> 600) | 1, "publicExponent": 65537}),
        ("exponent 1", {"modulus": large_modulus["modulus"], "publicExponent": 1}),
        ("even exponent", {"modulus": large_modulus["modulus"], "publicExponent": 65536}),
        ("even modulus", {"modulus": large_modulus["modulus"] - 1, "publicExponent": 65537}),
    ]
    message = b"the signed header block"
    for case, key in odd_keys:
        length = (key["modulus"].bit_length() + 7) // 8
        for signature in (bytes(length), b"\x01" * length, _pkcs1_signature(signer, "sha256", message)):
            hash_object = hashlib.sha256(message)
            assert _openssl_verdict(hash_object.copy(), signature, key) == _pure_verdict(
                hash_object.copy(), signature, key
            ), case


def test_a_valid_rsa_signature_is_checked_by_openssl_not_by_python_arithmetic(
    verifier, dkim_domains, mail, monkeypatch
):
    import dkim.crypto

    def pure_python(*args, **kwargs):
        raise AssertionError("dkimpy's pure-Python RSA was used")

    monkeypatch.setattr(dkim.crypto, "rsa_encrypt", pure_python)
    assert check(verifier, dkim_domains.sign(mail, REMOTE)) is None
    assert check(verifier, dkim_domains.sign(mail, "other.example"), "alice@other.example") is None


def test_each_key_record_is_parsed_once(verifier, dkim_domains, mails, monkeypatch):
    import dkim

    parsed: list[bytes] = []
    real_evaluate = dkim.evaluate_pk

    def counting(name, record):
        parsed.append(record)
        return real_evaluate(name, record)

    monkeypatch.setattr(dkim, "evaluate_pk", counting)
    # A key of this test's own, so that no other test has parsed its record before.
    from conftest import DkimDomains
    from cryptography.hazmat.primitives import serialization

    fresh = _rsa_key(2048)
    domains = DkimDomains(
        fresh.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
        fresh.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    own = DkimVerifier(lookup_txt=domains.lookup_txt)
    for _ in range(3):
        assert check(own, domains.sign(mails.make("encrypted", from_addr=ALICE), REMOTE)) is None
    assert parsed == [domains.record]


def test_a_key_record_that_does_not_parse_is_refused_every_time(dkim_domains, mail):
    verifier = DkimVerifier(lookup_txt=dkim_domains.lookup_txt)
    signed = dkim_domains.sign(mail, REMOTE)
    dkim_domains.published[f"sel1._domainkey.{REMOTE}."] = b"v=DKIM1; k=rsa; p=bm90IGEga2V5"
    assert check(verifier, signed) == REPLY_NO_VALID_SIGNATURE
    assert check(verifier, signed) == REPLY_NO_VALID_SIGNATURE


def test_verifying_with_cached_keys_agrees_with_the_full_check(verifier, dkim_domains, mail):
    signed = dkim_domains.sign(mail, REMOTE)
    prepared = verifier.prepare(signed)
    assert verifier.verify_cached(prepared, ALICE) is False  # no key cached yet: undecided
    assert check(verifier, signed) is None
    assert verifier.verify_cached(verifier.prepare(signed), ALICE) is True
    tampered = signed.replace(b"Subject:", b"Subject: x", 1)
    assert verifier.verify_cached(verifier.prepare(tampered), ALICE) is False
    assert verifier.verify_cached(verifier.prepare(signed), "alice@other.example") is False
    assert verifier.verify_cached(verifier.prepare(signed), "alice@[192.0.2.1]") is False


def _signed_corpus(mail: bytes) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
    """(case, message, DNS records by name): signed, tampered and malformed messages."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization

    def pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )

    def record(key, extra: bytes = b"") -> bytes:
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return b"v=DKIM1; k=rsa; " + extra + b"p=" + base64.b64encode(der)

    k2048, k1024, other = _rsa_key(2048), _rsa_key(1024), _rsa_key(2048)
    name = f"s._domainkey.{REMOTE}.".encode()

    def sign(message: bytes, key, **options) -> bytes:
        options.setdefault("include_headers", [b"from", b"to", b"subject", b"date", b"message-id"])
        return dkim.sign(message, b"s", REMOTE.encode(), pem(key), **options) + message

    good = sign(mail, k2048, canonicalize=(b"relaxed", b"relaxed"))
    simple = sign(mail, k2048, canonicalize=(b"simple", b"simple"))
    header, _, value = good.partition(b":")
    tags = dict(part.strip().split(b"=", 1) for part in value.replace(b"\r\n", b"").split(b";") if b"=" in part)
    records = {name: record(k2048)}
    cases = [
        ("relaxed/relaxed", good, records),
        ("simple/simple", simple, records),
        ("rsa-sha1", sign(mail, k2048, signature_algorithm=b"rsa-sha1"), records),
        ("1024-bit key", sign(mail, k1024), {name: record(k1024)}),
        ("signed by another key", sign(mail, other), records),
        ("header changed", good.replace(b"Subject:", b"Subject: x", 1), records),
        ("body changed", good.replace(b"-----END PGP MESSAGE", b"-----END PGP MESSAGF", 1), records),
        ("header refolded", good.replace(b"Subject: ", b"Subject:\r\n  ", 1), records),
        ("b= cut short", good.replace(tags[b"b"][:40], b"", 1), records),
        ("b= not base64", good.replace(tags[b"b"][:8], b"!!!!!!!!", 1), records),
        ("bh= not base64", good.replace(tags[b"bh"][:8], b"********", 1), records),
        ("no key published", good, {}),
        ("key record without p=", good, {name: b"v=DKIM1; k=rsa"}),
        ("key p= not a key", good, {name: b"v=DKIM1; k=rsa; p=bm90IGEga2V5"}),
        ("key of type ed25519", good, {name: b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(32))}),
        ("key of an unknown type", good, {name: b"v=DKIM1; k=dsa; p=AAAA"}),
        ("key for another service", good, {name: record(k2048, b"s=tlsrpt; ")}),
        ("key with a wrong version", good, {name: record(k2048).replace(b"DKIM1", b"DKIM2")}),
        ("unknown algorithm", good.replace(b"a=rsa-sha256", b"a=rsa-sha512", 1), records),
        ("no header list", good.replace(b" h=", b" x=", 1), records),
    ]
    many = mail
    for _ in range(20):
        many = sign(many, other)
    cases.append(("many failing signatures then a good one", sign(many, k2048), records))
    return cases


def test_verification_with_the_fast_paths_gives_dkimpys_own_verdict_on_every_message(mail, monkeypatch):
    import dkim

    from chatmaild import dkimcheck

    def verdicts(message: bytes, records: dict[bytes, bytes]) -> list[object]:
        signer = dkim.DKIM(message, logger=dkimcheck._dkimpy_log)
        count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
        results: list[object] = []
        for index in range(count):
            try:
                results.append(signer.verify(idx=index, dnsfunc=lambda name, timeout=0: records.get(name)))
            except Exception as exc:
                results.append(type(exc).__name__)
        return results

    corpus = _signed_corpus(mail)
    dkimcheck.install_fast_paths()
    fast = [verdicts(message, records) for _, message, records in corpus]
    fast_again = [verdicts(message, records) for _, message, records in corpus]  # parsed keys remembered now
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkimcheck._PURE_RSA_VERIFY)
    monkeypatch.setattr(dkim, "load_pk_from_dns", dkimcheck._DKIMPY_LOAD_PK)
    plain = [verdicts(message, records) for _, message, records in corpus]
    for (case, _, _), ours, again, theirs in zip(corpus, fast, fast_again, plain):
        assert ours == theirs == again, case
    by_case = {case: result for (case, _, _), result in zip(corpus, plain)}
    assert by_case["relaxed/relaxed"] == [True] and by_case["header changed"] == [False]
    assert by_case["body changed"] == ["ValidationError"] and by_case["header refolded"] == [True]
    assert by_case["many failing signatures then a good one"][0] is True

"""DKIM verification of incoming mail: the sender's domain must have signed it.

The relay accepts mail from other servers only if the domain in ``From:``
vouches for it with a DKIM signature whose ``d=`` is exactly that domain
(strict alignment, as DMARC ``adkim=s``; no organisational-domain
relaxation). Without this, anyone could deliver mail that claims to come
from a user of another relay. ``From:`` addresses with an IP literal
domain (``user@[192.0.2.1]``) cannot be signed (IP-only relays have no DNS
name to publish a key under); they are accepted only from the client
connected from exactly that address, which Postfix tells the filter with
XFORWARD, and never over HTTPS, where no such client exists.

Signatures with a body length tag (``l=``) are ignored: they vouch for a
prefix of the body only, so anything appended to a signed message would
pass. At most MAX_SIGNATURES_CHECKED signatures of the From domain are
tried, so that one message cannot cost dozens of key lookups.

Verification is split in two so that the event loop never blocks:

* the public keys (DNS TXT records ``<s>._domainkey.<d>``) are fetched
  asynchronously with dnspython's asyncio resolver and kept in an LRU cache;
* dkimpy then verifies in a worker thread, reading keys only from what was
  fetched. Hashing a body of up to ``max_message_size`` and the RSA
  arithmetic are CPU work that would stall every other connection if run
  on the loop. dkimpy's own asyncio support is not used because it needs
  the aiodns package, which we would only pull in for this.

Where a signature's key is already cached (senders write again), filtermail
verifies in the worker thread that parsed the message
(:meth:`DkimVerifier.verify_cached`): the common case costs no second trip
through a thread, and only what does not verify there takes the full path.

dkimpy does its RSA arithmetic in pure Python (half of its verification
time, ~0.3-0.6 ms per signature) and parses the key record's ASN.1 in
Python for every signature. :func:`install_fast_paths` hands the RSA
check to OpenSSL (through cryptography) for the keys where that gives
exactly dkimpy's result, and remembers dkimpy's parse of each key record.
The price is memory: cryptography's OpenSSL, loaded with the first
signature checked, adds about 7 MB to the incoming filter's resident size
(not to its idle size at start, which the memory benchmark measures).

A DNS failure that might be temporary (timeout, SERVFAIL, no resolver)
defers the message with a 4xx so the sender retries; only a definite
answer (no such key, bad signature) refuses it with 554.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dkim
import dkim.crypto
import dkim.util

from .addrparse import domain_literal_ip

log = logging.getLogger(__name__)

# dkimpy logs each signature's tag list at DEBUG and its own errors at ERROR;
# both are per-message noise for us, so only warnings and above pass.
_dkimpy_log = logging.getLogger(__name__ + ".dkimpy")
_dkimpy_log.setLevel(logging.WARNING)

REPLY_NO_SIGNATURE = "554 5.7.1 No DKIM signature found"
REPLY_NO_VALID_SIGNATURE = "554 5.7.1 No valid DKIM signature found"
REPLY_DNS_TEMPORARY = "451 4.4.3 DKIM key lookup failed temporarily, try again later"
REPLY_IP_LITERAL_MISMATCH = "554 5.7.1 Invalid FROM domain literal: not the address of the sending client"
REPLY_IP_LITERAL_NO_CLIENT = (
    "554 5.7.1 Invalid FROM domain literal: accepted only over SMTP from that address"
)

MAX_SIGNATURES_CHECKED = 5
"""Signatures of the From domain verified per message, in header order; the rest are ignored."""

DNS_TIMEOUT_SECONDS = 60.0
CACHE_SIZE = 1000
CACHE_MAX_AGE_SECONDS = 3600.0
"""Keys are refetched after this long even if every signature verified, so rotations are seen."""

SKIP_ENV_VAR = "CHATMAIL_SKIP_DKIM"


class DnsTemporaryError(Exception):
    """The key lookup failed in a way that may succeed later (timeout, SERVFAIL, no resolver)."""


TxtLookup = Callable[[str], Awaitable[bytes | None]]
"""Fetch the TXT record of a name: its bytes, None if there is none, or raise DnsTemporaryError."""


async def resolve_txt(name: str, timeout: float = DNS_TIMEOUT_SECONDS) -> bytes | None:
    """Look up one DKIM key record through the system resolver (unbound on a relay)."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    try:
        answer = await dns.asyncresolver.resolve(name, "TXT", lifetime=timeout, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.NoResolverConfiguration) as exc:
        raise DnsTemporaryError(f"{type(exc).__name__}") from exc
    except dns.exception.DNSException as exc:
        # e.g. a name too long to be a DNS name: no record can exist for it.
        log.debug("TXT lookup of %s: %s", name, exc)
        return None
    records = [b"".join(rdata.strings) for rdata in answer]
    # Several TXT records under one name: prefer the one that is a DKIM key.
    for record in records:
        if record.lstrip().startswith(b"v=DKIM1"):
            return record
    return records[0] if records else None


def should_skip_from_environment() -> bool:
    """True if ``CHATMAIL_SKIP_DKIM=1`` is set: for test setups without DNS only."""
    import os

    return os.environ.get(SKIP_ENV_VAR, "").strip().lower() in ("1", "true")


def is_ip_literal(domain: str) -> bool:
    """True for an address literal such as ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``."""
    return domain_literal_ip(domain) is not None


def client_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address as Postfix's XFORWARD writes it (``IPV6:`` prefix for IPv6), or None.

    ``[UNAVAILABLE]`` and anything else that is not an address give None. An
    IPv4 client seen on an IPv6 socket (``::ffff:192.0.2.1``) is its IPv4 address.
    """
    if not text:
        return None
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_ip_literal(domain: str, client_address: str | None) -> str | None:
    """The refusal for an IP-literal From domain, or None if the client is that address."""
    literal = domain_literal_ip(domain)
    client = client_ip(client_address)
    if client is None:
        return REPLY_IP_LITERAL_NO_CLIENT
    if literal is None or literal != client:
        return REPLY_IP_LITERAL_MISMATCH
    return None


@dataclasses.dataclass(frozen=True)
class _Signature:
    index: int
    domain: str
    selector: str

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}."


class KeyCache:
    """LRU cache of DKIM key records by DNS name; None (no record) is cached too."""

    def __init__(
        self,
        size: int = CACHE_SIZE,
        max_age: float = CACHE_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.max_age = max_age
        self.clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, bytes | None]] = collections.OrderedDict()
        # The event loop and the worker threads (verify_cached) both use the cache.
        self._lock = threading.Lock()

    def get(self, name: str) -> tuple[bool, bytes | None]:
        """(hit?, record)."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return False, None
            stored_at, record = entry
            if self.clock() - stored_at > self.max_age:
                del self._entries[name]
                return False, None
            self._entries.move_to_end(name)
            return True, record

    def put(self, name: str, record: bytes | None) -> None:
        with self._lock:
            self._entries[name] = (self.clock(), record)
            self._entries.move_to_end(name)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def invalidate(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def __len__(self) -> int:
        return len(self._entries)


def _parse_signatures(signer: dkim.DKIM) -> list[_Signature]:
    """The DKIM-Signature headers that name a domain and selector, in header order."""
    found = []
    index = -1
    for name, value in signer.headers:
        if name.lower() != b"dkim-signature":
            continue
        index += 1  # dkimpy's verify(idx) counts every DKIM-Signature header
        try:
            tags = dkim.util.parse_tag_value(value)
            domain = tags[b"d"].decode("ascii").strip()
            selector = tags[b"s"].decode("ascii").strip()
        except Exception:
            continue
        if b"l" in tags:
            log.info("DKIM: signature %d of %s ignored: it covers only part of the body (l=)", index, domain)
            continue
        found.append(_Signature(index, domain, selector))
    return found


# --- faster paths inside dkimpy ---------------------------------------------

OPENSSL_RSA_MIN_BITS = 1024
OPENSSL_RSA_MAX_BITS = 8192
"""RSA keys OpenSSL checks for dkimpy; smaller and larger ones keep dkimpy's own arithmetic."""
PARSED_KEYS_SIZE = CACHE_SIZE


class _BoundedCache:
    """A small thread-safe LRU map (worker threads share it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


_PURE_RSA_VERIFY = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_DKIMPY_LOAD_PK = dkim.load_pk_from_dns
_parsed_keys = _BoundedCache(PARSED_KEYS_SIZE)
_openssl_keys = _BoundedCache(PARSED_KEYS_SIZE)
_NOT_FOR_OPENSSL = object()


def load_pk_remembered(name: bytes, dnsfunc: Callable[..., Any], timeout: int = 5) -> Any:
    """dkimpy's ``load_pk_from_dns``, with its parse of each key record remembered.

    dkimpy parses the record (tag list, base64, ASN.1 in Python) for every
    signature it checks; the same record always gives the same key, so
    the result is kept by the record's bytes. Records that do not parse
    are not kept: dkimpy raises for them again, with the same error.
    """
    record = dnsfunc(name, timeout=timeout)
    if not isinstance(record, bytes):
        return dkim.evaluate_pk(name, record)
    parsed = _parsed_keys.get(record)
    if parsed is None:
        parsed = dkim.evaluate_pk(name, record)
        _parsed_keys.put(record, parsed)
    return parsed


def _openssl_key(modulus: int, exponent: int) -> Any:
    """The cryptography key for an RSA public key, or _NOT_FOR_OPENSSL."""
    cache_key = (modulus, exponent)
    key = _openssl_keys.get(cache_key)
    if key is not None:
        return key
    key = _NOT_FOR_OPENSSL
    bits = modulus.bit_length()
    if OPENSSL_RSA_MIN_BITS <= bits <= OPENSSL_RSA_MAX_BITS and 3 <= exponent < modulus:
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except Exception:  # an even modulus or exponent, or anything else OpenSSL will not take
            key = _NOT_FOR_OPENSSL
    _openssl_keys.put(cache_key, key)
    return key


def rsa_verify_openssl(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy's ``RSASSA_PKCS1_v1_5_verify``, with the RSA arithmetic done by OpenSSL.

    Exactly dkimpy's verdict: OpenSSL is asked only where both compute the
    same thing (a key of 1024 to 8192 bits, a SHA-1 or SHA-256 digest, a
    signature of exactly the modulus' length whose value is below the
    modulus); everything else, including whatever dkimpy raises for odd
    keys, goes through dkimpy's own function.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    modulus = public_key["modulus"]
    key = _openssl_key(modulus, public_key["publicExponent"])
    name = hash.name.lower()
    if (
        key is _NOT_FOR_OPENSSL
        or name not in ("sha1", "sha256")
        or len(signature) != (modulus.bit_length() + 7) // 8
        or int.from_bytes(signature, "big") >= modulus
    ):
        return bool(_PURE_RSA_VERIFY(hash, signature, public_key))
    algorithm = hashes.SHA256() if name == "sha256" else hashes.SHA1()
    try:
        key.verify(bytes(signature), hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


def install_fast_paths() -> None:
    """Make dkimpy verify through :func:`rsa_verify_openssl` and :func:`load_pk_remembered`.

    dkimpy looks both up as globals of its module at every verification,
    and offers no hook for either; same inputs, same results, so other
    users of dkimpy in this process see no difference. Idempotent.
    """
    dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify_openssl
    dkim.load_pk_from_dns = load_pk_remembered


Prepared = tuple[dkim.DKIM, list[_Signature], bool]
"""A parsed message, its signatures of interest, and whether it has any DKIM-Signature at all."""


def _aligned(signatures: list[_Signature], domain: str) -> list[_Signature]:
    """The signatures by exactly ``domain`` that are tried, in header order."""
    aligned = [sig for sig in signatures if sig.domain.lower() == domain.lower()]
    return aligned[:MAX_SIGNATURES_CHECKED]


class DkimVerifier:
    """Checks that incoming mail carries a valid DKIM signature of its ``From:`` domain."""

    def __init__(self, lookup_txt: TxtLookup = resolve_txt, cache: KeyCache | None = None) -> None:
        self.lookup_txt = lookup_txt
        self.cache = cache if cache is not None else KeyCache()
        install_fast_paths()

    async def check(
        self,
        data: bytes,
        from_addr: str,
        client_address: str | None = None,
        prepared: Prepared | None = None,
    ) -> str | None:
        """Return the SMTP refusal for ``data`` claiming to be from ``from_addr``, or None to accept.

        ``client_address`` is the sending server's IP address (XFORWARD
        ``ADDR``), or None where there is no such client (HTTPS delivery).
        ``prepared`` is :meth:`prepare`'s result for ``data`` where the
        caller already had it made in a worker thread (filtermail does, with
        the MIME checks: one thread hop less per message).
        """
        domain = from_addr.rpartition("@")[2]
        if domain.startswith("["):
            refusal = check_ip_literal(domain, client_address)
            if refusal is not None:
                log.info("incoming: IP-literal From domain refused: %s", refusal)
            return refusal
        try:
            if prepared is None:
                prepared = await asyncio.to_thread(self.prepare, data)
            signer, signatures, any_signature = prepared
        except Exception:
            log.info("DKIM: message could not be parsed for verification")
            return REPLY_NO_VALID_SIGNATURE
        if not any_signature:
            log.info("DKIM: no signature, From domain %s", domain)
            return REPLY_NO_SIGNATURE
        aligned = _aligned(signatures, domain)
        if not aligned:
            log.info("DKIM: no signature by the From domain %s", domain)
            return REPLY_NO_VALID_SIGNATURE
        temporary = False
        pending, use_cache = aligned, True
        while pending:
            keys, cached, lookup_failed = await self._fetch_keys(pending, use_cache)
            temporary = temporary or lookup_failed
            candidates = [sig for sig in pending if sig.key_name in keys]
            passed, failed = await asyncio.to_thread(self._verify, signer, candidates, keys)
            if passed:
                return None
            for sig in failed:
                self.cache.invalidate(sig.key_name)
            if not use_cache:
                break
            # A failure with a cached key may just be a rotated key: look
            # again once, with fresh records, before refusing.
            pending = [sig for sig in failed if sig.key_name in cached]
            use_cache = False
        if temporary:
            return REPLY_DNS_TEMPORARY
        log.info("DKIM: signature of %s did not verify", domain)
        return REPLY_NO_VALID_SIGNATURE

    def verify_cached(self, prepared: Prepared, from_addr: str) -> bool:
        """True if a signature :meth:`check` would try verifies with a key already cached.

        Blocking CPU work without any I/O, for the worker thread that just
        parsed the message: True means :meth:`check` would accept, so the
        caller may skip it. False decides nothing (a key may be missing or
        stale); :meth:`check` then runs as always.
        """
        domain = from_addr.rpartition("@")[2]
        if domain.startswith("["):
            return False
        signer, signatures, _ = prepared
        keys: dict[str, bytes | None] = {}
        candidates = []
        for sig in _aligned(signatures, domain):
            hit, record = self.cache.get(sig.key_name)
            if hit:
                keys[sig.key_name] = record
                candidates.append(sig)
        if not candidates:
            return False
        passed, _ = self._verify(signer, candidates, keys)
        return passed

    def prepare(self, data: bytes) -> Prepared:
        """Parse the message and its DKIM-Signature headers (CPU work: call it in a thread)."""
        signer = dkim.DKIM(data, logger=_dkimpy_log, timeout=int(DNS_TIMEOUT_SECONDS))
        any_signature = any(name.lower() == b"dkim-signature" for name, _ in signer.headers)
        return signer, _parse_signatures(signer), any_signature

    async def _fetch_keys(
        self, signatures: list[_Signature], use_cache: bool
    ) -> tuple[dict[str, bytes | None], set[str], bool]:
        """Keys by name, the names answered from the cache, and whether a lookup failed temporarily."""
        keys: dict[str, bytes | None] = {}
        cached: set[str] = set()
        temporary = False
        for name in dict.fromkeys(sig.key_name for sig in signatures):
            if use_cache:
                hit, record = self.cache.get(name)
                if hit:
                    keys[name] = record
                    cached.add(name)
                    continue
            try:
                record = await self.lookup_txt(name)
            except DnsTemporaryError as exc:
                log.warning("DKIM: key lookup of %s failed: %s", name, exc)
                temporary = True
                continue
            self.cache.put(name, record)
            keys[name] = record
        return keys, cached, temporary

    @staticmethod
    def _verify(
        signer: dkim.DKIM, signatures: list[_Signature], keys: dict[str, bytes | None]
    ) -> tuple[bool, list[_Signature]]:
        """Verify with prefetched keys only (runs in a thread): (one passed?, those that failed)."""

        def from_prefetched(name: bytes, timeout: int = 0) -> bytes | None:
            return keys.get(name.decode("ascii", "replace"))

        failed: list[_Signature] = []
        for sig in signatures:
            try:
                if signer.verify(idx=sig.index, dnsfunc=from_prefetched):
                    return True, failed
            except dkim.DKIMException as exc:
                log.debug("DKIM: signature %d of %s is malformed: %s", sig.index, sig.domain, exc)
            except Exception:
                log.debug(
                    "DKIM: signature %d of %s could not be checked", sig.index, sig.domain, exc_info=True
                )
            failed.append(sig)
        return False, failed

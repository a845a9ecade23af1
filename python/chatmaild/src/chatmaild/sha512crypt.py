"""SHA-512 crypt (the ``$6$`` scheme of glibc, Ulrich Drepper's specification).

Dovecot stores and compares passwords as ``{SHA512-CRYPT}$6$<salt>$<hash>``,
and relays migrated from an upstream deployment bring such hashes along, so
this is the scheme new accounts get too: one scheme for every account.

The hash is computed in C by libxcrypt's ``crypt_rn`` (through ctypes): the
library Dovecot itself verifies these hashes with, present on Debian and on
NixOS. Python 3.13 dropped the stdlib ``crypt`` module and its replacement
on PyPI (``crypt-r``) is not packaged in nixpkgs, hence ctypes. A pure-Python
implementation stays as the fallback (with a warning in the log) where the
library cannot be loaded: it gives the same hashes, about ten times slower,
which caps how fast accounts can be created but changes nothing else.

Finding the library: the Nix package writes libxcrypt's absolute path into
``BUILD_LIBCRYPT_PATH`` at build time (NixOS has no ldconfig cache, so
``ctypes.util.find_library`` finds nothing there); elsewhere the dynamic
loader finds ``libcrypt.so.1``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import hmac
import logging
import secrets

log = logging.getLogger(__name__)

BUILD_LIBCRYPT_PATH = "@libcrypt@"
"""libxcrypt's path, substituted by the Nix package; left as is, the loader searches."""
LIBCRYPT_SONAME = "libcrypt.so.1"
CRYPT_DATA_BYTES = 32768
"""``sizeof(struct crypt_data)`` of libxcrypt (crypt_rn checks the size it is given)."""

PREFIX = "$6$"
ROUNDS_DEFAULT = 5000
ROUNDS_MIN = 1000
ROUNDS_MAX = 999_999_999
SALT_MAX_CHARS = 16

# crypt's own base64 alphabet (not RFC 4648), least significant bits first.
_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _repeat_to(data: bytes, length: int) -> bytes:
    """Return ``data`` repeated and cut to exactly ``length`` bytes."""
    return (data * (length // len(data) + 1))[:length]


def _encode(digest: bytes) -> str:
    """Encode the 64-byte digest in the byte order the specification fixes.

    Bytes are taken in groups of three, ``(i, i+21, i+42)`` rotated by
    ``i % 3``, each group giving four characters; the last byte gives two.
    """
    out = []
    for i in range(21):
        group = (i, i + 21, i + 42)
        shift = i % 3
        b2, b1, b0 = group[shift:] + group[:shift]
        word = (digest[b2] << 16) | (digest[b1] << 8) | digest[b0]
        for _ in range(4):
            out.append(_ALPHABET[word & 0x3F])
            word >>= 6
    word = digest[63]
    for _ in range(2):
        out.append(_ALPHABET[word & 0x3F])
        word >>= 6
    return "".join(out)


def _digest(password: bytes, salt: bytes, rounds: int) -> bytes:
    """Compute the final 64-byte digest (steps 1-21 of the specification)."""
    plen = len(password)
    alternate = hashlib.sha512(password + salt + password).digest()

    ctx = hashlib.sha512(password + salt)
    ctx.update(_repeat_to(alternate, plen))
    n = plen
    while n > 0:
        ctx.update(alternate if n & 1 else password)
        n >>= 1
    intermediate = ctx.digest()

    p_bytes = _repeat_to(hashlib.sha512(password * plen).digest(), plen) if plen else b""
    s_bytes = _repeat_to(hashlib.sha512(salt * (16 + intermediate[0])).digest(), len(salt)) if salt else b""

    current = intermediate
    sha512 = hashlib.sha512
    for i in range(rounds):
        ctx = sha512(p_bytes if i & 1 else current)
        if i % 3:
            ctx.update(s_bytes)
        if i % 7:
            ctx.update(p_bytes)
        ctx.update(current if i & 1 else p_bytes)
        current = ctx.digest()
    return current


def _parse_setting(setting: str) -> tuple[str, int, bool]:
    """Split ``$6$[rounds=N$]salt[$hash]`` into salt, rounds, and whether rounds were explicit."""
    if not setting.startswith(PREFIX):
        raise ValueError(f"not a SHA-512 crypt setting (must start with {PREFIX!r}): {setting[:3]!r}")
    rest = setting[len(PREFIX) :]
    rounds = ROUNDS_DEFAULT
    explicit = False
    if rest.startswith("rounds="):
        spec, sep, rest = rest[len("rounds=") :].partition("$")
        if not sep or not spec.isdigit():
            raise ValueError(f"invalid rounds= field in SHA-512 crypt setting: {spec!r}")
        rounds = min(max(int(spec), ROUNDS_MIN), ROUNDS_MAX)
        explicit = True
    salt = rest.split("$", 1)[0][:SALT_MAX_CHARS]
    return salt, rounds, explicit


class _Libcrypt:
    """libxcrypt's reentrant ``crypt_rn``, with a work area of its own per call (thread-safe)."""

    def __init__(self, library: ctypes.CDLL, path: str) -> None:
        function = library.crypt_rn
        function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        function.restype = ctypes.c_char_p
        self._crypt_rn = function
        self.path = path

    def crypt(self, password: bytes, setting: bytes) -> str | None:
        """The hash, or None if libxcrypt refuses the setting."""
        data = ctypes.create_string_buffer(CRYPT_DATA_BYTES)  # zeroed: a fresh state
        result: bytes | None = self._crypt_rn(password, setting, data, CRYPT_DATA_BYTES)
        if not result or result.startswith(b"*"):
            return None
        return result.decode("ascii")


def _candidate_paths() -> list[str]:
    candidates = []
    if not BUILD_LIBCRYPT_PATH.startswith("@"):
        candidates.append(BUILD_LIBCRYPT_PATH)
    import ctypes.util

    found = ctypes.util.find_library("crypt")
    if found:
        candidates.append(found)
    candidates.append(LIBCRYPT_SONAME)
    return list(dict.fromkeys(candidates))


@functools.cache
def libcrypt() -> _Libcrypt | None:
    """Load libxcrypt once; None (and a warning) if no usable library is found."""
    problems = []
    for path in _candidate_paths():
        try:
            backend = _Libcrypt(ctypes.CDLL(path), path)
        except (OSError, AttributeError) as exc:  # missing, or a libcrypt without crypt_rn
            problems.append(f"{path}: {exc}")
            continue
        # One known vector, so that a library that computes something else is never used.
        if backend.crypt(b"Hello world!", b"$6$saltstring") != SPEC_CHECK:
            problems.append(f"{path}: wrong SHA-512 crypt result")
            continue
        log.debug("SHA-512 crypt in C from %s", path)
        return backend
    log.warning(
        "libxcrypt (crypt_rn) not usable, hashing passwords in pure Python, about ten times slower: %s",
        "; ".join(problems),
    )
    return None


SPEC_CHECK = (
    "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
)
"""The first test vector of the specification, checked when the library is loaded."""


def backend_name() -> str:
    """``libxcrypt`` or ``python``: which implementation :func:`crypt` uses."""
    return "libxcrypt" if libcrypt() is not None else "python"


def crypt(password: str | bytes, setting: str) -> str:
    """Hash ``password`` with the salt and rounds of ``setting`` (like ``crypt(3)``).

    In C where libxcrypt is available; a password with a NUL byte (which C
    strings cannot hold) is hashed in Python, as it always was.
    """
    if isinstance(password, str):
        # surrogateescape keeps bytes that were not valid UTF-8 as they came.
        password = password.encode("utf-8", "surrogateescape")
    library = libcrypt()
    if library is not None and b"\0" not in password and setting.isascii():
        _parse_setting(setting)  # the same errors for bad settings as in Python
        hashed = library.crypt(password, setting.encode("ascii"))
        if hashed is not None:
            return hashed
    return crypt_python(password, setting)


def crypt_python(password: str | bytes, setting: str) -> str:
    """:func:`crypt` in pure Python (the fallback, and the reference in tests)."""
    salt, rounds, explicit = _parse_setting(setting)
    if isinstance(password, str):
        password = password.encode("utf-8", "surrogateescape")
    encoded = _encode(_digest(password, salt.encode("ascii"), rounds))
    rounds_field = f"rounds={rounds}$" if explicit else ""
    return f"{PREFIX}{rounds_field}{salt}${encoded}"


def make_salt(length: int = SALT_MAX_CHARS) -> str:
    """Return a random salt from the crypt alphabet (16 chars = 96 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_password(password: str | bytes, salt: str | None = None, rounds: int | None = None) -> str:
    """Return ``$6$salt$hash`` for ``password``; a random salt unless one is given."""
    if salt is None:
        salt = make_salt()
    if "$" in salt or ":" in salt or "\n" in salt:
        raise ValueError(f"salt must not contain '$', ':' or newlines: {salt!r}")
    rounds_field = "" if rounds is None else f"rounds={rounds}$"
    return crypt(password, f"{PREFIX}{rounds_field}{salt}")


def verify(password: str, hashed: str) -> bool:
    """Tell whether ``password`` matches ``hashed`` (``$6$...``), in constant time."""
    try:
        candidate = crypt(password, hashed)
    except ValueError:
        return False
    return hmac.compare_digest(candidate.encode("ascii"), hashed.encode("utf-8", "replace"))

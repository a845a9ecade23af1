from __future__ import annotations

import random
import string
import warnings

import pytest

from chatmaild import sha512crypt

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt as stdlib_crypt
    except ImportError:  # Python >= 3.13
        stdlib_crypt = None

# Test vectors published with the SHA-crypt specification.
SPEC_VECTORS = [
    (
        "$6$saltstring",
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "$6$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/"
        "UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "$6$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
]


@pytest.mark.parametrize(("setting", "password", "expected"), SPEC_VECTORS)
def test_crypt_reproduces_the_specification_vectors(setting, password, expected):
    assert sha512crypt.crypt(password, setting) == expected


def test_hash_password_uses_a_fresh_16_char_salt_and_default_rounds():
    first = sha512crypt.hash_password("secret-password")
    second = sha512crypt.hash_password("secret-password")
    assert first != second
    prefix, scheme, salt, digest = first.split("$")
    assert (prefix, scheme, len(salt), len(digest)) == ("", "6", 16, 86)


def test_verify_accepts_the_right_password_only():
    hashed = sha512crypt.hash_password("correct horse")
    assert sha512crypt.verify("correct horse", hashed)
    assert not sha512crypt.verify("correct hors", hashed)
    assert not sha512crypt.verify("correct horse", "$1$notsha512$x")


def test_salt_with_separator_is_refused():
    with pytest.raises(ValueError, match="salt"):
        sha512crypt.hash_password("pw", salt="a$b")


@pytest.mark.skipif(stdlib_crypt is None, reason="stdlib crypt module not available (Python >= 3.13)")
def test_matches_system_crypt_for_random_passwords_and_salts():
    rng = random.Random(4711)
    alphabet = string.ascii_letters + string.digits + "./"
    for length in list(range(0, 70)) + [130, 200]:
        password = "".join(rng.choice(string.printable + "äöü€") for _ in range(length))
        salt = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16)))
        rounds_field = rng.choice(["", "rounds=1000$", "rounds=5001$"])
        setting = f"$6${rounds_field}{salt}"
        assert sha512crypt.crypt(password, setting) == stdlib_crypt.crypt(password, setting), setting


def test_libxcrypt_computes_the_hashes_where_it_is_installed():
    assert sha512crypt.backend_name() == "libxcrypt"


def test_libxcrypt_and_pure_python_give_the_same_hashes():
    rng = random.Random(815)
    alphabet = string.ascii_letters + string.digits + "./"
    for length in list(range(0, 40)) + [64, 65, 130, 200]:
        password = "".join(rng.choice(string.printable + "äöü€") for _ in range(length))
        salt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        setting = "$6$" + rng.choice(["", "rounds=1000$", "rounds=5001$", "rounds=10$"]) + salt
        assert sha512crypt.crypt(password, setting) == sha512crypt.crypt_python(password, setting), setting


def test_password_bytes_that_are_not_utf8_hash_alike_in_c_and_python():
    password = b"caf\xe9-\xff".decode("utf-8", "surrogateescape")
    assert sha512crypt.crypt(password, "$6$abc") == sha512crypt.crypt_python(password, "$6$abc")


def test_password_with_a_nul_byte_is_hashed_in_full():
    # C strings end at NUL; such a password must not hash like its prefix.
    assert sha512crypt.crypt("a\0b", "$6$abc") == sha512crypt.crypt_python("a\0b", "$6$abc")
    assert sha512crypt.crypt("a\0b", "$6$abc") != sha512crypt.crypt("a", "$6$abc")


def test_hash_made_in_c_verifies_and_a_stored_hash_from_a_migrated_relay_still_verifies():
    assert sha512crypt.verify("Hello world!", SPEC_VECTORS[0][2])
    assert sha512crypt.verify("Hello world!", SPEC_VECTORS[1][2])
    made = sha512crypt.hash_password("fresh password")
    assert sha512crypt.crypt_python("fresh password", made) == made


def test_without_libxcrypt_hashing_falls_back_to_python_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(sha512crypt, "_candidate_paths", lambda: ["/nonexistent/libcrypt.so.1"])
    sha512crypt.libcrypt.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="chatmaild.sha512crypt"):
            assert sha512crypt.backend_name() == "python"
            assert sha512crypt.crypt("Hello world!", SPEC_VECTORS[0][0]) == SPEC_VECTORS[0][2]
        assert "pure Python" in caplog.text
    finally:
        sha512crypt.libcrypt.cache_clear()


def test_a_library_giving_wrong_results_is_not_used(monkeypatch):
    monkeypatch.setattr(sha512crypt._Libcrypt, "crypt", lambda self, password, setting: "$6$wrong")
    sha512crypt.libcrypt.cache_clear()
    try:
        assert sha512crypt.backend_name() == "python"
        assert sha512crypt.crypt("Hello world!", SPEC_VECTORS[0][0]) == SPEC_VECTORS[0][2]
    finally:
        sha512crypt.libcrypt.cache_clear()

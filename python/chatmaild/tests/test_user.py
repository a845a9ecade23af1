from __future__ import annotations


def test_account_exists_only_with_non_empty_password_file(config):
    user = config.get_user("someone@chat.example.org")
    assert user.get_password_hash() is None
    user.maildir.mkdir(parents=True)
    user.password_path.write_text("")
    assert user.get_password_hash() is None
    user.password_path.write_text("{SHA512-CRYPT}$6$x$y\n")
    assert user.get_password_hash() == "{SHA512-CRYPT}$6$x$y"


def test_set_password_writes_atomically_and_enforces_encryption(config):
    user = config.get_user("someone@chat.example.org")
    assert user.is_incoming_cleartext_ok()
    user.set_password("{SHA512-CRYPT}$6$salt$hash")
    assert user.password_path.read_text() == "{SHA512-CRYPT}$6$salt$hash"
    assert user.password_path.stat().st_mode & 0o777 == 0o600
    assert not user.is_incoming_cleartext_ok()
    assert sorted(p.name for p in user.maildir.iterdir()) == ["enforceE2EEincoming", "password"]


def test_allow_incoming_cleartext_removes_the_marker(config):
    user = config.get_user("someone@chat.example.org")
    user.set_password("{SHA512-CRYPT}$6$salt$hash")
    user.allow_incoming_cleartext()
    assert user.is_incoming_cleartext_ok()

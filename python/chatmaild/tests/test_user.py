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


def test_create_makes_the_account_with_its_marker_and_no_leftovers(config):
    user = config.get_user("someone@chat.example.org")
    assert user.create("{SHA512-CRYPT}$6$a$first") == (True, "{SHA512-CRYPT}$6$a$first")
    assert user.password_path.read_text() == "{SHA512-CRYPT}$6$a$first"
    assert user.password_path.stat().st_mode & 0o777 == 0o600
    assert not user.is_incoming_cleartext_ok()
    assert sorted(p.name for p in user.maildir.iterdir()) == ["enforceE2EEincoming", "password"]


def test_create_never_overwrites_an_existing_or_emptied_password(config):
    user = config.get_user("someone@chat.example.org")
    user.create("{SHA512-CRYPT}$6$a$first")
    assert user.create("{SHA512-CRYPT}$6$b$second") == (False, "{SHA512-CRYPT}$6$a$first")
    user.password_path.write_text("")  # an operator's block
    assert user.create("{SHA512-CRYPT}$6$c$third") == (False, None)
    assert user.password_path.read_text() == ""
    assert sorted(p.name for p in user.maildir.iterdir()) == ["enforceE2EEincoming", "password"]


def _create_in_child(args: tuple[object, str, str]) -> tuple[bool, str | None]:
    config, addr, password_hash = args
    return config.get_user(addr).create(password_hash)  # type: ignore[attr-defined]


def test_first_logins_racing_in_several_processes_create_the_account_exactly_once(config):
    """No lock is taken: the password file is linked into place, which exactly one of
    any number of concurrent creators (threads or processes) can do."""
    import multiprocessing

    addr = "racer1234@chat.example.org"
    jobs = [(config, addr, f"{{SHA512-CRYPT}}$6$s{i}$h{i}") for i in range(24)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        results = pool.map(_create_in_child, jobs, chunksize=1)
    winners = [stored for created, stored in results if created]
    assert len(winners) == 1
    assert {stored for _, stored in results} == {winners[0]}
    assert config.get_user(addr).password_path.read_text() == winners[0]
    assert sorted(p.name for p in config.get_user(addr).maildir.iterdir()) == ["enforceE2EEincoming", "password"]

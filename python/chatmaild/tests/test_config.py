from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chatmaild.config import ConfigError, key_parsers, load_defaults, parse_size_mb, read_config


def write_ini(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chatmail.ini"
    path.write_text(text)
    return path


def test_file_with_only_mail_domain_gives_the_defaults_and_an_upstream_layout(tmp_path):
    config = read_config(write_ini(tmp_path, "[params]\nmail_domain = chat.example.org\n"))
    assert config.mail_domain == "chat.example.org"
    assert config.max_user_send_per_minute == 60
    assert config.max_user_send_burst_size == 10
    assert config.max_mailbox_size == 500
    assert config.max_message_size == 31457280
    assert config.delete_mails_after == 20
    assert config.delete_large_after == 7
    assert config.delete_inactive_users_after == 90
    assert (config.username_min_length, config.username_max_length) == (9, 9)
    assert config.password_min_length == 9
    assert (config.filtermail_smtp_port, config.filtermail_smtp_port_incoming) == (10080, 10081)
    assert (config.postfix_reinject_port, config.postfix_reinject_port_incoming) == (10025, 10026)
    assert config.max_load_1m == 5.0
    assert config.min_available_memory == 200
    assert config.min_free_disk_space == 1024
    assert config.mailboxes_dir == Path("/home/vmail/mail/chat.example.org")
    assert config.tls_cert_mode == "acme"
    assert config.iroh_relay == "", "this relay runs no iroh relay, so none is offered"
    assert config.turn_secret_file is None and config.appversions_file is None
    assert config.nocreate_file == Path("/etc/chatmail-nocreate")
    assert config.metadata_socket == Path("/run/chatmail-metadata/metadata.socket")
    assert config.doveauth_token_file == Path("/run/doveauth/token")
    assert config.doveauth_listen == "127.0.0.1:10090"
    assert config.unused_keys == ()


def test_every_key_field_has_a_default_in_the_shared_defaults_file():
    defaults = load_defaults()
    derived_when_absent = {"mailboxes_dir", "tls_cert_mode"}
    for key in key_parsers():
        assert key in defaults.settings or key in defaults.paths or key in derived_when_absent, key
    assert not set(defaults.settings) & set(defaults.paths)
    assert not (set(defaults.settings) | set(defaults.paths)) & set(defaults.upstream_only)


def test_defaults_pass_their_own_parsers(tmp_path):
    defaults = load_defaults()
    lines = ["[params]", "mail_domain = chat.example.org", "tls_cert_mode = acme", "mailboxes_dir = /m"]
    for key, value in {**defaults.settings, **defaults.paths}.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    config = read_config(write_ini(tmp_path, "\n".join(lines) + "\n"))
    assert config.unused_keys == ()
    assert config == read_config(write_ini(tmp_path, "[params]\nmail_domain = chat.example.org\n"
                                                    "tls_cert_mode = acme\nmailboxes_dir = /m\n"))


def test_settings_only_the_service_configuration_reads_are_accepted_without_warning(make_config, caplog):
    with caplog.at_level(logging.WARNING, logger="chatmaild.config"):
        config = make_config(max_smtp_connections="10", disable_ipv6="true", privacy_mail="dpo@example.org")
    assert config.unused_keys == ()
    assert not caplog.records


def test_values_are_converted_to_their_types(make_config):
    config = make_config(
        max_message_size="1000",
        max_load_1m="2.5",
        max_mailbox_size="2G",
        iroh_relay="https://iroh.example.org/",
        appversions_file="",
        turn_secret_file="/run/credentials/turn-secret",
        filtermail_smtp_port="2525",
    )
    assert config.max_message_size == 1000
    assert config.max_load_1m == 2.5
    assert config.max_mailbox_size == 2048
    assert config.iroh_relay == "https://iroh.example.org/"
    assert config.appversions_file is None, "empty means not offered"
    assert config.turn_secret_file == Path("/run/credentials/turn-secret")
    assert config.filtermail_smtp_port == 2525


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_message_size", "30M"),
        ("filtermail_smtp_port", "70000"),
        ("username_min_length", "-1"),
        ("max_load_1m", "high"),
        ("min_free_disk_space", "10K"),
        ("tls_external_cert_and_key", "/only/one/path"),
        ("doveauth_listen", "localhost"),
        ("tls_cert_mode", "self"),
        ("nocreate_file", ""),
    ],
)
def test_invalid_value_error_names_file_key_and_value(make_config, key, value):
    with pytest.raises(ConfigError) as excinfo:
        make_config(**{key: value})
    message = str(excinfo.value)
    assert "chatmail.ini" in message
    assert f"[params] {key} = {value!r}: expected" in message


def test_upstream_keys_this_relay_ignores_are_warned_about_by_name(make_config, caplog):
    with caplog.at_level(logging.WARNING, logger="chatmaild.config"):
        config = make_config(imap_rawlog="true", mtail_address="127.0.0.1", www_folder="")
    assert config.unused_keys == ("imap_rawlog", "mtail_address", "www_folder")
    [warning] = [r.getMessage() for r in caplog.records]
    assert "known upstream keys, not used by this relay: imap_rawlog, mtail_address, www_folder" in warning


def test_an_external_certificate_key_beside_an_explicit_mode_is_warned_about(make_config, caplog):
    with caplog.at_level(logging.WARNING, logger="chatmaild.config"):
        config = make_config(tls_cert_mode="acme", tls_external_cert_and_key="/c.pem /k.pem")
    assert config.tls_cert_mode == "acme"
    assert "not used by this relay: tls_external_cert_and_key" in caplog.text


def test_unknown_keys_are_named_in_one_warning(make_config, caplog):
    with caplog.at_level(logging.WARNING, logger="chatmaild.config"):
        config = make_config(shape="round", colour="blue")
    assert config.unused_keys == ("shape", "colour")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "shape" in warnings[0] and "colour" in warnings[0]


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="nothere.ini: configuration file not found"):
        read_config(tmp_path / "nothere.ini")


def test_missing_mail_domain_is_an_error_naming_the_file(tmp_path):
    path = write_ini(tmp_path, "[params]\nmax_message_size = 100\n")
    with pytest.raises(ConfigError, match=r"chatmail.ini: \[params\] mail_domain is required"):
        read_config(path)


def test_file_without_params_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no \[params\] section"):
        read_config(write_ini(tmp_path, "[other]\nmail_domain = x\n"))


def test_comments_and_percent_signs_are_read_literally(tmp_path):
    text = "# comment\n; another\n[params]\nmail_domain = chat.example.org\nnotification_url = https://x/100%\n"
    assert read_config(write_ini(tmp_path, text)).notification_url == "https://x/100%"


def test_ipv4_literal_becomes_bracketed_mail_domain(tmp_path):
    config = read_config(write_ini(tmp_path, "[params]\nmail_domain = 1.3.3.7\n"))
    assert config.mail_domain == "[1.3.3.7]"
    assert config.ipv4_relay == "1.3.3.7"
    assert config.tls_cert_mode == "self-signed"
    assert config.mailboxes_dir == Path("/home/vmail/mail/1.3.3.7")


@pytest.mark.parametrize("domain", ["fe::1", "12394142", "ad.1e.dag.adf"])
def test_things_that_are_not_ipv4_stay_domains(tmp_path, domain):
    config = read_config(write_ini(tmp_path, f"[params]\nmail_domain = {domain}\n"))
    assert config.mail_domain == domain and config.ipv4_relay is None


def test_without_a_mode_an_external_certificate_wins_over_underscore_domain(make_config):
    config = make_config(mail_domain="_test.example", tls_external_cert_and_key="/c.pem  /k.pem")
    assert config.tls_cert_mode == "external"
    assert make_config(mail_domain="_test.example").tls_cert_mode == "self-signed"


def test_an_explicit_mode_wins_over_the_shape_of_the_domain(make_config):
    assert make_config(mail_domain="_test.example", tls_cert_mode="acme").tls_cert_mode == "acme"
    assert make_config(mail_domain="chat.example.org", tls_cert_mode="self-signed").tls_cert_mode == "self-signed"


@pytest.mark.parametrize(
    ("text", "megabytes"), [("500M", 500), ("2G", 2048), ("  1g  ", 1024), ("100MB", 100), ("256", 256)]
)
def test_sizes_are_parsed_to_megabytes(text, megabytes):
    assert parse_size_mb(text) == megabytes


@pytest.mark.parametrize("addr", ["", "no-at-sign", "../x@y", "a/b@c", "..", "."])
def test_get_user_refuses_addresses_that_could_escape_the_mail_directory(config, addr):
    with pytest.raises(ValueError, match="invalid address"):
        config.get_user(addr)


def test_get_user_maps_address_to_its_maildir(config):
    user = config.get_user("someone@chat.example.org")
    assert user.maildir == config.mailboxes_dir / "someone@chat.example.org"
    assert user.password_path == user.maildir / "password"
    assert user.enforce_E2EE_path == user.maildir / "enforceE2EEincoming"


def test_passthrough_lists_are_read_as_lower_case_addresses_and_domains(make_config):
    config = make_config(passthrough_senders="Privacy@Chat.Example.org  bot@x.org",
                         passthrough_recipients="echo@x.org @Example.NET")
    assert config.passthrough_senders == ("privacy@chat.example.org", "bot@x.org")
    assert config.passthrough_recipients == ("echo@x.org", "@example.net")
    assert make_config().passthrough_senders == () and make_config().passthrough_recipients == ()


@pytest.mark.parametrize(("key", "raw"), [("passthrough_senders", "@example.net"),
                                          ("passthrough_recipients", "no-at-sign"),
                                          ("passthrough_recipients", "a@b@c")])
def test_a_malformed_passthrough_entry_is_an_error_naming_the_key(make_config, key, raw):
    with pytest.raises(ConfigError, match=key):
        make_config(**{key: raw})

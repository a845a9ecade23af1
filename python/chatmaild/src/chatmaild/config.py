"""Typed reading of ``chatmail.ini``.

The file keeps the upstream key names, so an operator can bring an existing
``chatmail.ini`` across. It is parsed exactly once into a frozen
:class:`Config`: every value is converted and checked here, so the daemons
never see a raw string and a typo fails at start-up with the key, the value
and the file named, instead of somewhere deep inside a mail transaction.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .user import User

log = logging.getLogger(__name__)

SECTION = "params"


class ConfigError(Exception):
    """The configuration file is missing, unreadable or holds an invalid value."""


def parse_size_mb(text: str) -> int:
    """Convert a size such as ``500M``, ``2G`` or ``256`` (megabytes) to megabytes.

    Only whole numbers; a trailing ``B`` is ignored (``100MB``), case does not
    matter. ``K`` is deliberately not supported: these are disk and memory
    floors where kilobytes make no sense.
    """
    value = text.strip().upper()
    if value.endswith("B"):
        value = value[:-1]
    factor = 1
    if value.endswith("G"):
        factor, value = 1024, value[:-1]
    elif value.endswith("M"):
        value = value[:-1]
    if not value.isdigit():
        raise ValueError(f"not a size in megabytes: {text!r}")
    return int(value) * factor


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of one relay, converted and derived once."""

    path: Path
    mail_domain: str
    """The domain used in addresses: the raw value, or ``[ip]`` for an IPv4 relay."""
    mail_domain_bare: str
    ipv4_relay: str | None
    postfix_myhostname: str

    max_user_send_per_minute: int = 60
    max_user_send_burst_size: int = 10
    max_mailbox_size: str = "500M"
    max_mailbox_size_mb: int = 500
    max_message_size: int = 31457280
    delete_mails_after: int = 20
    delete_large_after: int = 7
    delete_inactive_users_after: int = 90
    username_min_length: int = 9
    username_max_length: int = 9
    password_min_length: int = 9
    www_folder: str = ""
    filtermail_smtp_port: int = 10080
    filtermail_smtp_port_incoming: int = 10081
    filtermail_http_port_incoming: int = 10082
    filtermail_lmtp_port_transport: int = 10083
    postfix_reinject_port: int = 10025
    postfix_reinject_port_incoming: int = 10026
    mtail_address: str | None = None
    disable_ipv6: bool = False
    acme_email: str = ""
    imap_rawlog: bool = False
    imap_compress: bool = False
    turn_socket_path: str = "/run/chatmail-turn/turn.socket"
    enable_iroh_relay: bool = True
    iroh_relay: str = ""
    privacy_postal: str | None = None
    privacy_mail: str | None = None
    privacy_pdo: str | None = None
    privacy_supervisor: str | None = None
    max_load_1m: float = 5.0
    min_available_memory: str = "200M"
    min_available_memory_mb: int = 200
    min_free_disk_space: str = "1G"
    min_free_disk_space_mb: int = 1024
    max_imap_connections: int = 10000
    max_smtp_connections: int = 1000
    tls_external_cert_and_key: str = ""
    tls_cert_mode: str = "acme"
    tls_cert_path: str = ""
    tls_key_path: str = ""
    mailboxes_dir: Path = Path("/home/vmail/mail")
    passdb_path: Path = Path("/home/vmail/passdb.sqlite")

    # Keys of this project (not upstream).
    nocreate_file: Path = Path("/etc/chatmail-nocreate")
    """While this file exists, doveauth creates no new accounts."""
    doveauth_listen: str = "127.0.0.1:10090"
    """``HOST:PORT`` where doveauth serves Dovecot's Lua passdb/userdb."""
    notification_url: str = "https://notifications.delta.chat/notify"
    """Where the notifier POSTs each device token (the Delta Chat notifications proxy)."""
    turn_secret_file: Path = Path("/var/lib/chatmail-turn/secret")
    """The per-relay TURN REST secret, shared with the TURN server (coturn ``use-auth-secret``)."""
    turn_port: int = 3478
    """The UDP port clients are told to reach the TURN server on."""
    appversions_file: Path | None = None
    """JSON app-version index offered as ``/shared/vendor/deltachat/appversions`` (unset: not offered)."""
    newemail_listen: str = "127.0.0.1:10091"
    """``HOST:PORT`` of the ``/new`` account-suggestion service that nginx proxies to."""
    blocklist_file: Path = Path("/var/lib/chatmail/blocklist")
    """Addresses that may never log in or be created again (``chatmail accounts block``)."""
    dkim_selector: str = "opendkim"
    """The DKIM selector, for ``chatmail dns`` (the key is ``<selector>._domainkey.<domain>``)."""
    dkim_key_file: Path = Path("/etc/dkimkeys/opendkim.private")
    """The DKIM private key, for ``chatmail dns``; the default is an upstream relay's."""

    unused_keys: tuple[str, ...] = ()
    """Keys present in the file that no setting consumes (warned about)."""

    def get_user(self, addr: str) -> User:
        """Return the :class:`User` stored under ``mailboxes_dir/addr``.

        The address becomes a directory name, so anything that could escape
        ``mailboxes_dir`` is refused. The domain is *not* checked here.
        """
        if not addr or "@" not in addr or "/" in addr:
            raise ValueError(f"invalid address for a mailbox: {addr!r}")
        return User(self.mailboxes_dir / addr, addr)


def _expect(path: Path, key: str, raw: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: [params] {key} = {raw!r}: expected {what}")


def _int(path: Path, key: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise _expect(path, key, raw, "a whole number, e.g. 10") from None
    if value < 0:
        raise _expect(path, key, raw, "a number that is not negative")
    return value


def _port(path: Path, key: str, raw: str) -> int:
    value = _int(path, key, raw)
    if not 1 <= value <= 65535:
        raise _expect(path, key, raw, "a TCP port between 1 and 65535")
    return value


def _float(path: Path, key: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise _expect(path, key, raw, "a number, e.g. 5 or 2.5") from None


def _bool(path: Path, key: str, raw: str) -> bool:
    # Upstream semantics: only "true" (any case) is true, everything else false.
    return raw.strip().lower() == "true"


def _str(path: Path, key: str, raw: str) -> str:
    return raw


def _path(path: Path, key: str, raw: str) -> Path:
    if not raw:
        raise _expect(path, key, raw, "a file system path")
    return Path(raw)


def _listen(path: Path, key: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _expect(path, key, raw, "HOST:PORT, e.g. 127.0.0.1:10090")
    return raw


_Parser = Callable[[Path, str, str], Any]

# Keys whose field has the same name and a plain conversion.
_SIMPLE: dict[str, _Parser] = {
    "max_user_send_per_minute": _int,
    "max_user_send_burst_size": _int,
    "max_message_size": _int,
    "delete_mails_after": _int,
    "delete_large_after": _int,
    "delete_inactive_users_after": _int,
    "username_min_length": _int,
    "username_max_length": _int,
    "password_min_length": _int,
    "www_folder": _str,
    "filtermail_smtp_port": _port,
    "filtermail_smtp_port_incoming": _port,
    "filtermail_http_port_incoming": _port,
    "filtermail_lmtp_port_transport": _port,
    "postfix_reinject_port": _port,
    "postfix_reinject_port_incoming": _port,
    "mtail_address": _str,
    "disable_ipv6": _bool,
    "acme_email": _str,
    "imap_rawlog": _bool,
    "imap_compress": _bool,
    "turn_socket_path": _str,
    "privacy_postal": _str,
    "privacy_mail": _str,
    "privacy_pdo": _str,
    "privacy_supervisor": _str,
    "max_load_1m": _float,
    "max_imap_connections": _int,
    "max_smtp_connections": _int,
    "passdb_path": _path,
    "nocreate_file": _path,
    "doveauth_listen": _listen,
    "notification_url": _str,
    "turn_secret_file": _path,
    "turn_port": _port,
    "newemail_listen": _listen,
    "appversions_file": _path,
    "blocklist_file": _path,
    "dkim_selector": _str,
    "dkim_key_file": _path,
}

# Sizes keep the raw text (Dovecot reads it) and add the value in megabytes.
_SIZES = ("max_mailbox_size", "min_available_memory", "min_free_disk_space")


def _read_params(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(
        interpolation=None,
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,
        default_section="chatmail-ini-no-default-section",
    )
    try:
        with path.open(encoding="utf-8") as fp:
            parser.read_file(fp)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc}") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not a valid INI file: {exc}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"{path}: no [{SECTION}] section")
    return {key: value.strip() for key, value in parser.items(SECTION)}


def read_config(path: str | Path) -> Config:
    """Read and check ``chatmail.ini``; raise :class:`ConfigError` naming the problem."""
    path = Path(path)
    params = _read_params(path)
    fields: dict[str, Any] = {}

    mail_domain = params.pop("mail_domain", "")
    if not mail_domain:
        raise ConfigError(f"{path}: [params] mail_domain is required, e.g. mail_domain = chat.example.org")
    fields["mail_domain_bare"] = mail_domain
    try:
        ip = ipaddress.IPv4Address(mail_domain)
    except ValueError:
        fields.update(mail_domain=mail_domain, ipv4_relay=None, postfix_myhostname=mail_domain)
    else:
        fields.update(mail_domain=f"[{ip}]", ipv4_relay=str(ip), postfix_myhostname=ip.reverse_pointer)

    for key, parse in _SIMPLE.items():
        if key in params:
            fields[key] = parse(path, key, params.pop(key))

    for key in _SIZES:
        if key in params:
            raw = params.pop(key)
            try:
                fields[f"{key}_mb"] = parse_size_mb(raw)
            except ValueError:
                raise _expect(path, key, raw, "a size in megabytes such as 500M or 2G") from None
            fields[key] = raw

    raw_dir = params.pop("mailboxes_dir", "")
    fields["mailboxes_dir"] = Path(raw_dir) if raw_dir else Path("/home/vmail/mail") / mail_domain

    if "iroh_relay" in params:
        fields["iroh_relay"] = params.pop("iroh_relay").strip()
        fields["enable_iroh_relay"] = False
    else:
        fields["iroh_relay"] = f"https://{fields['mail_domain']}"
        fields["enable_iroh_relay"] = True

    tls_external = params.pop("tls_external_cert_and_key", "")
    if tls_external:
        parts = tls_external.split()
        if len(parts) != 2:
            raise _expect(
                path, "tls_external_cert_and_key", tls_external, "two space-separated paths: CERT KEY"
            )
        fields.update(tls_cert_mode="external", tls_cert_path=parts[0], tls_key_path=parts[1])
    elif mail_domain.startswith("_") or fields["ipv4_relay"]:
        fields.update(
            tls_cert_mode="self",
            tls_cert_path="/etc/ssl/certs/mailserver.pem",
            tls_key_path="/etc/ssl/private/mailserver.key",
        )
    else:
        domain = fields["mail_domain"]
        fields.update(
            tls_cert_mode="acme",
            tls_cert_path=f"/var/lib/acme/live/{domain}/fullchain",
            tls_key_path=f"/var/lib/acme/live/{domain}/privkey",
        )
    fields["tls_external_cert_and_key"] = tls_external

    if fields.get("username_min_length", 9) > fields.get("username_max_length", 9):
        raise ConfigError(f"{path}: [params] username_min_length is larger than username_max_length")

    unused = tuple(params)
    if unused:
        log.warning("%s: [params] settings that have no effect: %s", path, ", ".join(unused))
    return Config(path=path, unused_keys=unused, **fields)

"""Typed reading of ``chatmail.ini``.

The file keeps the upstream key names, so an operator can bring an existing
``chatmail.ini`` across. It is parsed exactly once into a frozen
:class:`Config`: every value is converted and checked here, so the daemons
never see a raw string and a typo fails at start-up with the key, the value
and the file named, instead of somewhere deep inside a mail transaction.

Each key's parser follows from the type of its :class:`Config` field, and
each default comes from ``defaults.toml`` beside this module, the file the
NixOS module reads too. The NixOS module writes every key, so these
defaults only serve a file brought over from an upstream relay.
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import ipaddress
import logging
import tomllib
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

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
class Defaults:
    """The contents of ``defaults.toml``: one table per kind of key."""

    settings: dict[str, Any]
    """Defaults of the settings an operator tunes."""
    paths: dict[str, str]
    """Where things live on an upstream relay (the module and the lab always write these)."""
    upstream_only: dict[str, str]
    """Upstream keys nothing here acts on, each with the reason."""


@functools.cache
def load_defaults() -> Defaults:
    """Read ``defaults.toml`` from the installed package (it ships inside it)."""
    text = resources.files(__package__).joinpath("defaults.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return Defaults(settings=data["settings"], paths=data["paths"], upstream_only=data["upstream-only"])


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


def _optional_path(path: Path, key: str, raw: str) -> Path | None:
    return Path(raw) if raw else None


def _listen(path: Path, key: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise _expect(path, key, raw, "HOST:PORT, e.g. 127.0.0.1:10090")
    return raw


def _megabytes(path: Path, key: str, raw: str) -> int:
    try:
        return parse_size_mb(raw)
    except ValueError:
        raise _expect(path, key, raw, "a size in megabytes such as 500M or 2G") from None


def _addresses(path: Path, key: str, raw: str) -> tuple[str, ...]:
    entries = tuple(raw.lower().split())
    for entry in entries:
        local, at, domain = entry.rpartition("@")
        if not at or not domain or "@" in local:
            raise _expect(path, key, raw, "addresses or @domain entries, separated by spaces")
    return entries


def _exact_addresses(path: Path, key: str, raw: str) -> tuple[str, ...]:
    entries = _addresses(path, key, raw)
    if any(entry.startswith("@") for entry in entries):
        raise _expect(path, key, raw, "whole addresses (no @domain entries), separated by spaces")
    return entries


Port = Annotated[int, _port]
"""A TCP or UDP port, 1 to 65535."""
Listen = Annotated[str, _listen]
"""``HOST:PORT`` to listen on."""
Megabytes = Annotated[int, _megabytes]
"""A size written as ``500M``, ``2G`` or ``256``, held in megabytes."""
Addresses = Annotated[tuple[str, ...], _addresses]
"""Space-separated mail addresses and ``@domain`` entries, held in lower case."""
ExactAddresses = Annotated[tuple[str, ...], _exact_addresses]
"""Space-separated mail addresses, held in lower case."""
TlsMode = Literal["acme", "external", "self-signed"]
"""Where the certificate comes from; ``self-signed`` makes ``/new`` tell clients to accept it."""


def _not_a_key() -> Any:
    """A field derived by :func:`read_config` rather than read from a key of the same name."""
    return dataclasses.field(metadata={"key": False})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """All settings of one relay, converted and derived once.

    Every field but the few marked ``_not_a_key()`` is the chatmail.ini key of
    the same name, parsed according to the field's type.
    """

    path: Path = _not_a_key()
    mail_domain: str = _not_a_key()
    """The domain used in addresses: the raw value, or ``[ip]`` for an IPv4 relay."""
    ipv4_relay: str | None = _not_a_key()
    """The bare IPv4 address of a relay addressed by IP (``mail_domain = 192.0.2.7``)."""

    max_user_send_per_minute: int
    max_user_send_burst_size: int
    max_mailbox_size: Megabytes
    max_message_size: int
    delete_mails_after: int
    delete_large_after: int
    delete_inactive_users_after: int
    username_min_length: int
    username_max_length: int
    password_min_length: int
    filtermail_smtp_port: Port
    filtermail_smtp_port_incoming: Port
    filtermail_http_port_incoming: Port
    postfix_reinject_port: Port
    postfix_reinject_port_incoming: Port
    max_load_1m: float
    min_available_memory: Megabytes
    min_free_disk_space: Megabytes
    doveauth_listen: Listen
    """Where doveauth serves Dovecot's Lua passdb/userdb."""
    newemail_listen: Listen
    """Where the ``/new`` account-suggestion service listens for nginx."""
    notification_url: str
    """Where the notifier POSTs each device token (the Delta Chat notifications proxy)."""
    turn_port: Port
    """The port clients are told to reach the TURN server on."""
    iroh_relay: str
    """The iroh relay clients are told to use; empty: none offered."""
    appversions_file: Path | None
    passthrough_senders: ExactAddresses
    """Senders whose cleartext mail filtermail passes on (exact addresses)."""
    passthrough_recipients: Addresses
    """Recipients that take cleartext from our users: exact addresses or ``@domain``;
    a message passes only if all its recipients match."""
    """JSON app-version index offered as ``/shared/vendor/deltachat/appversions`` (None: not offered)."""

    mailboxes_dir: Path
    nocreate_file: Path
    """While this file exists, doveauth creates no new accounts."""
    metadata_socket: Path
    lastlogin_socket: Path
    doveauth_token_file: Path
    turn_secret_file: Path | None
    """The TURN REST secret shared with the TURN server (None: no TURN server offered)."""
    tls_cert_mode: TlsMode
    tls_cert_file: Path | None
    """The relay's certificate chain, for ``chatmail status`` (None: not known)."""
    disable_ipv6: bool
    """Listen and send over IPv4 only (``chatmail dns`` then publishes no AAAA)."""
    blocklist_file: Path
    """Addresses that may never log in or be created again (``chatmail accounts block``)."""
    dkim_selector: str
    """The DKIM selector, for ``chatmail dns`` (the key is ``<selector>._domainkey.<domain>``)."""
    dkim_key_file: Path
    """The DKIM private key OpenDKIM signs with, for ``chatmail dns``."""
    metrics_dir: Path | None
    """Where each daemon keeps its event counters for ``chatmail metrics`` (None: nothing is counted)."""

    unused_keys: tuple[str, ...] = dataclasses.field(default=(), metadata={"key": False})
    """Keys present in the file that no setting consumes (warned about)."""

    def get_user(self, addr: str) -> User:
        """Return the :class:`User` stored under ``mailboxes_dir/addr``.

        The address becomes a directory name, so anything that could escape
        ``mailboxes_dir`` is refused. The domain is *not* checked here.
        """
        if not addr or "@" not in addr or "/" in addr:
            raise ValueError(f"invalid address for a mailbox: {addr!r}")
        return User(self.mailboxes_dir / addr, addr)


_Parser = Callable[[Path, str, str], Any]

_PLAIN: dict[object, _Parser] = {
    int: _int,
    float: _float,
    bool: _bool,
    str: _str,
    Path: _path,
    Path | None: _optional_path,
}


def _parser_for(hint: object) -> _Parser:
    """The parser a field's type calls for: the one in its ``Annotated``, a choice for a
    ``Literal``, else the plain parser of the type."""
    if typing.get_origin(hint) is Annotated:
        parser: _Parser = typing.get_args(hint)[1]
        return parser
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)

        def choice(path: Path, key: str, raw: str) -> str:
            if raw not in choices:
                raise _expect(path, key, raw, "one of " + ", ".join(choices))
            return raw

        return choice
    try:
        return _PLAIN[hint]
    except KeyError:
        raise TypeError(f"no chatmail.ini parser for the type {hint!r}") from None


@functools.cache
def key_parsers() -> dict[str, _Parser]:
    """chatmail.ini key -> parser, for every :class:`Config` field that is a key."""
    hints = typing.get_type_hints(Config, include_extras=True)
    return {
        field.name: _parser_for(hints[field.name])
        for field in dataclasses.fields(Config)
        if field.metadata.get("key", True)
    }


def _ini_text(value: object) -> str:
    """A default from defaults.toml as chatmail.ini spells it, so it passes the same parser."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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


def _upstream_tls_mode(path: Path, params: dict[str, str], mail_domain: str, ipv4: str | None) -> str:
    """Upstream's rule, for a file without ``tls_cert_mode``: an external certificate if
    ``tls_external_cert_and_key`` names one, self-signed for ``_``-domains and IP relays,
    else ACME."""
    external = params.pop("tls_external_cert_and_key", "")
    if external:
        if len(external.split()) != 2:
            raise _expect(path, "tls_external_cert_and_key", external, "two space-separated paths: CERT KEY")
        return "external"
    if mail_domain.startswith("_") or ipv4:
        return "self-signed"
    return "acme"


def read_config(path: str | Path) -> Config:
    """Read and check ``chatmail.ini``; raise :class:`ConfigError` naming the problem."""
    path = Path(path)
    params = _read_params(path)
    defaults = load_defaults()
    fields: dict[str, Any] = {"path": path}

    mail_domain = params.pop("mail_domain", "")
    if not mail_domain:
        raise ConfigError(f"{path}: [params] mail_domain is required, e.g. mail_domain = chat.example.org")
    try:
        ip = ipaddress.IPv4Address(mail_domain)
    except ValueError:
        fields.update(mail_domain=mail_domain, ipv4_relay=None)
    else:
        fields.update(mail_domain=f"[{ip}]", ipv4_relay=str(ip))

    # Keys without a fixed default: upstream derives them from the domain.
    if "mailboxes_dir" not in params:
        fields["mailboxes_dir"] = Path("/home/vmail/mail") / mail_domain
    external = params.get("tls_external_cert_and_key", "").split()
    if "tls_cert_file" not in params and external:
        fields["tls_cert_file"] = Path(external[0])
    if "tls_cert_mode" not in params:
        fields["tls_cert_mode"] = _upstream_tls_mode(path, params, mail_domain, fields["ipv4_relay"])

    fallback = {**defaults.settings, **defaults.paths}
    for key, parse in key_parsers().items():
        if key in params:
            fields[key] = parse(path, key, params.pop(key))
        elif key not in fields:
            fields[key] = parse(path, key, _ini_text(fallback[key]))

    if fields["username_min_length"] > fields["username_max_length"]:
        raise ConfigError(f"{path}: [params] username_min_length is larger than username_max_length")

    # Settings the service configuration (Postfix, Dovecot, nginx, the web pages) reads.
    for key in defaults.settings:
        params.pop(key, None)
    unused = tuple(params)
    upstream_only = [key for key in unused if key in defaults.upstream_only]
    unknown = [key for key in unused if key not in upstream_only]
    if upstream_only:
        log.warning(
            "%s: [params] known upstream keys, not used by this relay: %s",
            path,
            ", ".join(upstream_only),
        )
    if unknown:
        log.warning("%s: [params] unknown settings that have no effect: %s", path, ", ".join(unknown))
    return Config(unused_keys=unused, **fields)

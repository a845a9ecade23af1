"""Render Postfix's main.cf and master.cf from the module's data the way NixOS does.

NixOS 26.05's postfix module (nixos/modules/services/mail/postfix.nix) turns
``services.postfix.settings.main`` and ``.master`` into files by fixed rules; the lab applies
the same rules to the same data (evaluated from ``nixos/modules/chatmail/config/postfix.nix``),
so that Postfix in the lab reads what Postfix on NixOS reads. The rules:

main.cf: keys in sorted order, ``null`` drops the key, ``$`` in a key is doubled; booleans are
``yes``/``no``; numbers decimal; strings verbatim (values are not escaped, so ``$myhostname``
stays a Postfix reference); a list is a continuation block, one item per indented line,
separated by commas; lines joined by newlines, no newline at the end.

master.cf: the module's own entries (NIXOS_MASTER: Postfix's standard services, and with
``enableSmtp``, on by default, smtp_inet, smtp and relay) merged with ours, in attribute order;
columns name, type, private, unpriv, chroot, wakeup, maxproc, command; an unset column is
``-``; ``privileged = true`` is written ``n`` in the unpriv column; each argument starting with
``-`` opens a new indented continuation line; columns padded to their widest entry under a
header. Nothing else: no postlog, tlsproxy or postscreen service, so Postfix logs through
syslog (the journal), as on NixOS.
"""

from __future__ import annotations

import json
from typing import Any

# services.postfix.settings.master as nixpkgs' postfix module defines it.
NIXOS_MASTER: dict[str, dict[str, Any]] = {
    "pickup": {"private": False, "wakeup": 60, "maxproc": 1},
    "cleanup": {"private": False, "maxproc": 0},
    "qmgr": {"private": False, "wakeup": 300, "maxproc": 1},
    "tlsmgr": {"wakeup": 1000, "wakeupUnusedComponent": False, "maxproc": 1},
    "rewrite": {"command": "trivial-rewrite"},
    "bounce": {"maxproc": 0},
    "defer": {"maxproc": 0, "command": "bounce"},
    "trace": {"maxproc": 0, "command": "bounce"},
    "verify": {"maxproc": 1},
    "flush": {"private": False, "wakeup": 1000, "wakeupUnusedComponent": False, "maxproc": 0},
    "proxymap": {"command": "proxymap"},
    "proxywrite": {"maxproc": 1, "command": "proxymap"},
    "showq": {"private": False},
    "error": {},
    "retry": {"command": "error"},
    "discard": {},
    "local": {"privileged": True},
    "virtual": {"privileged": True},
    "lmtp": {},
    "anvil": {"maxproc": 1},
    "scache": {"maxproc": 1},
    # enableSmtp (default true)
    "smtp_inet": {"name": "smtp", "type": "inet", "private": False, "command": "smtpd"},
    "smtp": {},
    "relay": {"command": "smtp", "args": ["-o", "smtp_fallback_relay="]},
}


def _main_value(value: Any) -> str:
    if isinstance(value, list):
        return "\n  " + ",\n  ".join(str(v) for v in value)
    if isinstance(value, bool):
        return " " + ("yes" if value else "no")
    return " " + str(value)


def main_cf(main: dict[str, Any]) -> str:
    return "\n".join(f"{key.replace('$', '$$')} ={_main_value(main[key])}"
                     for key in sorted(main) if main[key] is not None)


def _flag(entry: dict[str, Any], key: str, invert: bool = False) -> str:
    if key not in entry or entry[key] is None:
        return "-"
    value = bool(entry[key])
    if invert:
        value = not value
    return "y" if value else "n"


def master_entry(attr: str, entry: dict[str, Any]) -> list[str]:
    """One master.cf line as its eight columns (the module's rawEntry)."""
    wakeup = "-"
    if entry.get("wakeup") is not None:
        wakeup = str(entry["wakeup"]) + ("?" if entry.get("wakeupUnusedComponent") is False else "")
    maxproc = "-" if entry.get("maxproc") is None else str(entry["maxproc"])
    args = " ".join(("\n  " if a.startswith("-") else "") + a for a in entry.get("args", []))
    return [
        entry.get("name", attr),
        entry.get("type", "unix"),
        _flag(entry, "private"),
        _flag(entry, "privileged", invert=True),
        _flag(entry, "chroot"),
        wakeup,
        maxproc,
        entry.get("command", attr) + " " + args,
    ]


def merge_master(ours: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The module's entries and ours, as the module system merges them (lists append)."""
    merged = {name: dict(entry) for name, entry in NIXOS_MASTER.items()}
    for name, entry in ours.items():
        base = merged.setdefault(name, {})
        for key, value in entry.items():
            base[key] = base.get(key, []) + value if key == "args" else value
    return merged


def master_cf(ours: dict[str, dict[str, Any]]) -> str:
    labels = ["# service", "type", "private", "unpriv", "chroot", "wakeup", "maxproc", "command + args"]
    defaults = ["# ", "", "(yes)", "(yes)", "(no)", "(never)", "(100)", ""]
    entries = merge_master(ours)
    lines = [master_entry(attr, entries[attr]) for attr in sorted(entries)]
    widths = [max(len(col) for col in cols)
              for cols in zip(labels, defaults, *[line[:-1] + [""] for line in lines])]
    full = sum(w + 2 for w in widths)

    def fmt(line: list[str]) -> str:
        return "  ".join(col.ljust(w) for col, w in zip(line, widths))

    sep = "# " + "=" * (full + 5)
    header = "\n".join([sep, fmt(labels), fmt(defaults), sep])
    return header + "\n" + "\n".join(fmt(line) for line in lines) + "\n"


# --------------------------------------------------------------------------- nginx

# What nixpkgs 26.05's nginx module writes into the http block for the options our module
# leaves at their defaults or turns on (nixos/modules/services/web-servers/nginx/default.nix):
# sslProtocols and sslCiphers (always), recommendedTlsSettings, recommendedProxySettings
# (proxyTimeout 60s) and clientMaxBodySize.
SSL_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
])
HTTP_DEFAULTS = [
    "ssl_protocols TLSv1.2 TLSv1.3;",
    f"ssl_ciphers {SSL_CIPHERS};",
    "ssl_session_timeout 1d;",
    "ssl_session_cache shared:SSL:10m;",
    "ssl_session_tickets off;",
    "ssl_prefer_server_ciphers off;",
    "client_max_body_size 10m;",
]

# The proxy headers of recommendedProxySettings. A location that sets any proxy_set_header
# loses the http block's ones, so NixOS includes them again in every location with a
# proxyPass (and the http block's `Connection ""` does not reach those locations).
RECOMMENDED_PROXY = [
    "proxy_set_header Host $host;",
    "proxy_set_header X-Real-IP $remote_addr;",
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
    "proxy_set_header X-Forwarded-Host $host;",
    "proxy_set_header X-Forwarded-Server $hostname;",
]
# recommendedProxySettings in the http block: HTTP/1.1 to the upstreams (so a chunked
# request body is passed on as it comes when request buffering is off), keep-alive allowed.
RECOMMENDED_PROXY_HTTP = [
    "proxy_redirect off;",
    "proxy_connect_timeout 60s;",
    "proxy_send_timeout 60s;",
    "proxy_read_timeout 60s;",
    "proxy_http_version 1.1;",
    'proxy_set_header "Connection" "";',
    *RECOMMENDED_PROXY,
]


# What a location with proxyWebsockets gets, and the map nixpkgs' nginx module always writes
# into the http block for it.
WEBSOCKETS = [
    "proxy_http_version 1.1;",
    "proxy_set_header Upgrade $http_upgrade;",
    "proxy_set_header Connection $connection_upgrade;",
]
CONNECTION_UPGRADE_MAP = ["map $http_upgrade $connection_upgrade {", "  default upgrade;", "  '' close;", "}"]


def _indent(lines: list[str], depth: int) -> str:
    return "\n".join(" " * depth + line for chunk in lines for line in chunk.splitlines())


def nginx_location(name: str, loc: dict) -> str:
    """One vhost location from services.nginx.virtualHosts.<n>.locations data, its
    directives in the order NixOS writes them."""
    body = []
    if loc.get("proxyPass"):
        body.append(f"proxy_pass {loc['proxyPass']};")
    if loc.get("proxyWebsockets"):
        body += WEBSOCKETS
    if loc.get("alias"):
        body.append(f"alias {loc['alias']};")
    if loc.get("return"):
        body.append(f"return {loc['return']};")
    if loc.get("extraConfig"):
        body.append(loc["extraConfig"].strip())
    if loc.get("proxyPass"):
        body += RECOMMENDED_PROXY
    return f"  location {name} {{\n{_indent(body, 4)}\n  }}"


def nginx_listen(listen: list[dict], ssl: bool, port: int) -> str:
    """The listen lines services.nginx.defaultListen gives a vhost on one side (TLS or not)."""
    lines = [f"listen {entry['addr']}:{port}{' ssl' if ssl else ''}"
             f"{' proxy_protocol' if entry.get('proxyProtocol') else ''};" for entry in listen if entry["ssl"] == ssl]
    return _indent(lines, 4)


def nginx_conf(nginx: dict, domain: str, https_port: int, cert: str, key: str, acme_webroot: str,
               plain_http: dict | None = None) -> str:
    """A whole nginx.conf in the shape NixOS gives the relay's site: the port-443 stream
    split, port 80 answering ACME challenges from the webroot (useACMEHost) and redirecting
    everything else to HTTPS (forceSSL), and the HTTPS vhost on loopback.

    `plain_http`: locations that port 80 serves as well (lab only: the iroh relay, whose
    clients would not trust the lab's CA)."""
    names = " ".join([domain, *nginx["serverAliases"]])
    locations = "\n".join(nginx_location(n, loc) for n, loc in sorted(nginx["locations"].items()))
    plain = "\n".join(nginx_location(n, loc) for n, loc in sorted((plain_http or {}).items()))
    return f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {{}}
stream {{
{nginx["streamConfig"]}
}}
http {{
  include /etc/nginx/mime.types;
  server_tokens off;
{_indent(HTTP_DEFAULTS + RECOMMENDED_PROXY_HTTP, 2)}
{_indent(CONNECTION_UPGRADE_MAP, 2)}
{_indent([nginx["httpConfig"]], 2)}
  server {{
{nginx_listen(nginx["defaultListen"], False, 80)}
    server_name {names};
    location / {{ return 301 https://$host$request_uri; }}
    location ^~ /.well-known/acme-challenge/ {{ root {acme_webroot}; }}
{plain}
  }}
  server {{
{nginx_listen(nginx["defaultListen"], True, https_port)}
    http2 on;
    server_name {names};
    ssl_certificate {cert};
    ssl_certificate_key {key};
{locations}
{_indent([nginx["extraConfig"]], 4)}
  }}
}}
"""


# --------------------------------------------------------------------------- coturn


def turnserver_conf(turn: dict, secret: str) -> str:
    """turnserver.conf from config/turn.nix, as NixOS's coturn module writes it: true is a
    bare flag, false is left out, everything else is key=value, then the extra lines. coturn
    reads no secret file itself: static-auth-secret-file becomes static-auth-secret with the
    file's content (the module substitutes it when the service starts)."""
    lines = []
    for key in sorted(k for k in turn if k != "extraLines"):
        value = turn[key]
        if key == "static-auth-secret-file":
            lines.append(f"static-auth-secret={secret}")
        elif value is True:
            lines.append(key)
        elif value is not False and value is not None:
            lines.append(f"{key}={value}")
    return "\n".join(lines + list(turn.get("extraLines", []))) + "\n"


# --------------------------------------------------------------------------- iroh-relay


def toml_flat(settings: dict) -> str:
    """A TOML file of top-level keys only (iroh-relay's configuration, config/iroh-relay.nix),
    as pkgs.formats.toml writes it on NixOS: booleans, integers and strings."""
    lines = []
    for key in sorted(settings):
        v = settings[key]
        if isinstance(v, bool):
            lines.append(f"{key} = {'true' if v else 'false'}")
        elif isinstance(v, int):
            lines.append(f"{key} = {v}")
        elif isinstance(v, str):
            lines.append(f"{key} = {json.dumps(v)}")
        else:
            raise TypeError(f"{key} = {v!r}: only booleans, integers and strings are written")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- unbound


def unbound_conf(settings: dict, extra: dict[str, dict]) -> str:
    """unbound.conf from services.unbound.settings data (config/unbound.nix) as NixOS writes
    it: one clause per top-level key, booleans yes/no, a list as one line per item; `extra`
    adds lab-only lines to a clause (or new clauses)."""
    out = []
    clauses = {k: dict(v) for k, v in settings.items()}
    for name, lines in extra.items():
        clauses.setdefault(name, {}).update(lines)
    for clause, body in clauses.items():
        out.append(f"{clause}:")
        for key, value in body.items():
            for item in value if isinstance(value, list) else [value]:
                rendered = ("yes" if item else "no") if isinstance(item, bool) else str(item)
                out.append(f"  {key}: {rendered}")
    return "\n".join(out) + "\n"

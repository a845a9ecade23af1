"""systemd unit files from the module's unit data, written by NixOS's rules.

``nixos/modules/chatmail/config/units.nix`` describes every chatmaild unit as data; NixOS
turns it into unit files (``systemd.services.<name>``), and so does this module, for the
lab's relays and for the sandbox scoring in tests/nix. The rules are NixOS's:

- a list value becomes one ``Key=item`` line per item, ``true``/``false`` become
  ``true``/``false``, everything else its text;
- ``ExecStart`` is an argv list, quoted as ``utils.escapeSystemdExecArgs`` quotes it: each
  argument as a JSON string, ``%`` doubled (no specifier expansion), ``$`` doubled (no
  environment expansion);
- ``after``/``before``/``wants``/``requires`` go to [Unit], ``wantedBy``/``requiredBy``
  become the ``.wants``/``.requires`` links of the target (returned as ``links``);
- a socket's ``listenStreams`` become ``ListenStream=`` lines before its ``socketConfig``
  (``systemd.sockets.<name>``);
- ``script`` becomes an executable file run by ExecStart (NixOS: a store file run by bash
  with ``set -e``; here ``/bin/sh -e``, the snippets being POSIX shell).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

UNIT_KEYS = {"after": "After", "before": "Before", "wants": "Wants", "requires": "Requires"}


def exec_arg(arg: str | int) -> str:
    """One argument of an Exec line, as nixpkgs' utils.escapeSystemdExecArg quotes it."""
    return json.dumps(str(arg), ensure_ascii=False).replace("%", "%%").replace("$", "$$")


def exec_args(argv: list[str | int]) -> str:
    return " ".join(exec_arg(a) for a in argv)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def section(name: str, settings: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    for key in sorted(settings):
        v = settings[key]
        for item in v if isinstance(v, list) else [v]:
            lines.append(f"{key}={value(item)}")
    return lines


@dataclass
class Rendered:
    """Files to write (path under the unit directory -> text, executable scripts beside),
    and the links that enable the unit: (target, unit file name, "wants" or "requires")."""

    files: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    links: list[tuple[str, str, str]] = field(default_factory=list)


def service(name: str, unit: dict, script_dir: str) -> Rendered:
    """A .service file (and its timer, its script) from one entry of units.nix `services`."""
    out = Rendered()
    unit_section = {"Description": unit["description"]}
    for key, directive in UNIT_KEYS.items():
        if unit.get(key):
            unit_section[directive] = " ".join(unit[key])
    svc = dict(unit["serviceConfig"])
    if "ExecStart" in svc:
        svc["ExecStart"] = exec_args(svc["ExecStart"])
    if unit.get("script"):
        path = f"{script_dir}/{name}"
        out.scripts[path] = "#!/bin/sh -e\n" + unit["script"]
        svc["ExecStart"] = exec_args([path])
    lines = section("Unit", unit_section) + [""] + section("Service", svc)
    out.files[f"{name}.service"] = "\n".join(lines) + "\n"
    for target in unit.get("wantedBy", []):
        out.links.append((target, f"{name}.service", "wants"))
    for target in unit.get("requiredBy", []):
        out.links.append((target, f"{name}.service", "requires"))
    if "timerConfig" in unit:
        timer = section("Unit", {"Description": unit["description"]}) + [""] + section("Timer", unit["timerConfig"])
        out.files[f"{name}.timer"] = "\n".join(timer) + "\n"
        out.links.append(("timers.target", f"{name}.timer", "wants"))
    return out


def drop_in(unit_section: dict[str, list[str]], service_section: dict[str, Any]) -> str:
    """A drop-in for a unit someone else ships (Debian's postfix, OpenDKIM, ...)."""
    lines: list[str] = []
    if unit_section:
        lines += section("Unit", {k: " ".join(v) for k, v in unit_section.items() if v}) + [""]
    if service_section:
        lines += section("Service", service_section)
    return "\n".join(lines) + "\n"


def socket_unit(name: str, unit: dict) -> Rendered:
    """A .socket file from one entry of units.nix `sockets`, as NixOS's systemd.sockets writes it."""
    out = Rendered()
    sock = {**unit.get("socketConfig", {}), "ListenStream": list(unit.get("listenStreams", []))}
    lines = section("Unit", {"Description": unit["description"]}) + [""] + section("Socket", sock)
    out.files[f"{name}.socket"] = "\n".join(lines) + "\n"
    for target in unit.get("wantedBy", []):
        out.links.append((target, f"{name}.socket", "wants"))
    return out

"""The chatmaild units' sandbox, scored by systemd itself.

The units are rendered from nixos/modules/chatmail/config/units.nix, the data the NixOS
module turns into systemd services, by the lab's unit writer (tests/lab/units.py, NixOS's
rules: a list becomes one line per item, ExecStart is quoted as escapeSystemdExecArgs does),
and scored with `systemd-analyze security --offline=yes`. Each long-running or daily unit's
exposure is printed; every one must stay at 2.0 or below. (The lab scores the units as its
relays loaded them, too: tests/lab/test_systemd.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/lab"))

import units as unitfiles  # noqa: E402
from test_units import evaluate  # noqa: E402  (the units as NixOS gets them)

CONFIG = ROOT / "nixos/modules/chatmail/config"
MAX_EXPOSURE = 2.0


# The one-shots that make secrets run as root and are not daemons: not scored here. Metrics on,
# so that the textfile writer is scored too, and the iroh relay's unit, which is there only on a
# relay that runs one.
IROH = {"irohRelayExe": "/bin/iroh-relay", "irohRelayConfig": "/etc/chatmail/iroh-relay.toml"}
UNITS = {name: unit for name, unit in evaluate(metricsTextfileDir="/var/lib/chatmail-metrics", **IROH)["services"].items()
         if "script" not in unit}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_exposure_is_at_most_two(name, tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: tools/install-deps installs it"
    path = tmp_path / f"{name}.service"
    path.write_text(unitfiles.service(name, UNITS[name], str(tmp_path)).files[path.name])
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                       capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert match, r.stdout[-2000:] + r.stderr[-2000:]
    exposure = float(match.group(1))
    print(f"{name + '.service':32} exposure {exposure:.1f}")
    assert exposure <= MAX_EXPOSURE, r.stdout

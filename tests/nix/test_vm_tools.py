"""The VM tests drive a relay with the lab's own client programs (tests/vm/tools.nix packages
tests/lab/mailcheck.py and pushproxy.py with writePython3Bin). writePython3Bin runs flake8 on
them when a VM test is built; nothing here can build one, so the same check runs here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tests/vm/tools.nix"
SHEBANG = "#!/usr/bin/env python3\n"


def flake_ignore() -> list[str]:
    match = re.search(r"flakeIgnore = \[([^\]]*)\]", TOOLS.read_text())
    assert match, "tests/vm/tools.nix sets no flakeIgnore"
    return re.findall(r'"([A-Z]\d+)"', match.group(1))


def test_every_vm_test_takes_its_client_from_the_lab():
    for test in ("federation", "features", "tls"):
        text = (ROOT / f"tests/vm/{test}.nix").read_text()
        assert "import ./tools.nix" in text, test
    assert not list((ROOT / "tests/vm").glob("*.py")), "a second mail client in tests/vm"


@pytest.mark.parametrize("name", ["mailcheck", "pushproxy"])
def test_the_lab_clients_pass_the_flake8_check_their_vm_build_runs(name, tmp_path):
    source = (ROOT / f"tests/lab/{name}.py").read_text()
    assert source.startswith(SHEBANG)  # tools.nix drops exactly this line
    # What writePython3Bin checks: its own #! line, then the script.
    script = tmp_path / name
    script.write_text("#! /nix/store/python3/bin/python3\n" + source.removeprefix(SHEBANG))
    cmd = [sys.executable, "-m", "flake8", "--show-source"]
    ignore = flake_ignore()
    if ignore:
        cmd += ["--ignore", ",".join(ignore)]
    result = subprocess.run([*cmd, str(script)], capture_output=True, text=True)
    assert "No module named flake8" not in result.stderr, "flake8 is missing: tools/install-deps installs it"
    assert result.returncode == 0, result.stdout + result.stderr

"""chatmaild's unit tests on the Python the relays run: Debian 13's 3.13, inside relay1."""

from __future__ import annotations

from conftest import labmod
from rootfs import VENV


def test_chatmaild_unit_tests_pass_on_the_relays_python(lab):
    relay = labmod.BY_NAME["relay1"]
    source = labmod.paths()["chatmaildSource"]
    version = labmod.host_run(relay, [f"{VENV}/bin/python", "-V"], capture=True).stdout.strip()
    r = labmod.host_run(
        relay,
        ["setpriv", "--reuid=vmail", "--regid=vmail", "--init-groups",
         "env", f"PYTHONPATH={source}/src", "PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp",
         f"{VENV}/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir=/tmp",
         "-c", f"{source}/pyproject.toml", f"{source}/tests"],
        check=False, capture=True,
    )
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
    print(f"{version} in relay1: {summary}")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary

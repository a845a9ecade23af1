"""The lab's cached builds without building anything: running two side by side, counting
their CPU time, and the iroh relay's cache entry following its recipe."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/lab"))
import builds  # noqa: E402
import iroh_build  # noqa: E402


def test_the_two_builds_run_at_the_same_time():
    # Each build waits for the other to have started: run one after the other, the first
    # would wait in vain.
    both_running = threading.Barrier(2, timeout=5)

    def build(p):
        both_running.wait()
        return threading.current_thread().name

    got = builds.run_side_by_side({"a": builds.Build(build, Path("a.log")),
                                   "b": builds.Build(build, Path("b.log"))}, lambda m: None)
    assert got == {"a": "build-a", "b": "build-b"}


def test_a_failing_build_surfaces_with_its_log_after_the_other_finishes(tmp_path):
    finished = []

    def fails(p):
        raise RuntimeError("cargo install failed (101)")

    def succeeds(p):
        time.sleep(0.3)  # still running when the other one fails
        finished.append("dovecot")
        return tmp_path / "lib.so"

    with pytest.raises(builds.BuildFailed) as e:
        builds.run_side_by_side({"dovecot": builds.Build(succeeds, tmp_path / "d.log"),
                                 "iroh-relay": builds.Build(fails, tmp_path / "i.log")}, lambda m: None)
    assert finished == ["dovecot"]
    assert str(e.value) == f"the iroh-relay build failed (log: {tmp_path / 'i.log'}): cargo install failed (101)"
    assert isinstance(e.value.__cause__, RuntimeError)


def test_every_failed_build_is_named_not_only_the_first(tmp_path):
    def fails(p):
        raise OSError("no space left")

    with pytest.raises(builds.BuildFailed) as e:
        builds.run_side_by_side({"dovecot": builds.Build(fails, tmp_path / "d.log"),
                                 "iroh-relay": builds.Build(fails, tmp_path / "i.log")}, lambda m: None)
    assert f"the dovecot build failed (log: {tmp_path / 'd.log'})" in str(e.value)
    assert f"the iroh-relay build failed (log: {tmp_path / 'i.log'})" in str(e.value)


def test_progress_lines_say_which_build_they_come_from():
    lines = []
    lock = threading.Lock()

    def progress(msg):
        with lock:
            lines.append(msg)

    builds.run_side_by_side({"dovecot": builds.Build(lambda p: p("configuring"), Path("d.log")),
                             "iroh-relay": builds.Build(lambda p: p("cargo install"), Path("i.log"))}, progress)
    assert sorted(lines) == ["[dovecot] configuring", "[iroh-relay] cargo install"]


def test_the_cpu_count_includes_the_processes_a_step_starts(tmp_path):
    # The CPU is spent in a grandchild (sh starts python), as cargo starts rustc.
    spin = f"{sys.executable} -c 'import time; t = time.process_time()\nwhile time.process_time() - t < 0.3: pass'"
    with (tmp_path / "out").open("w") as out:
        code, cpu = builds.run_counted(["/bin/sh", "-c", f"{spin}; exit 3"], env={}, stdout=out)
    assert code == 3
    assert 0.3 <= cpu < 5


def test_the_cpu_count_of_one_step_leaves_out_other_threads_children(tmp_path):
    counted = {}

    def step(name, seconds):
        spin = f"import time; t = time.process_time()\nwhile time.process_time() - t < {seconds}: pass"
        counted[name] = builds.run_counted([sys.executable, "-c", spin], env={}, stdout=subprocess.DEVNULL)[1]

    threads = [threading.Thread(target=step, args=("short", 0.1)), threading.Thread(target=step, args=("long", 0.6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counted["short"] < 0.4 <= 0.6 <= counted["long"]


def test_the_clock_reports_wall_and_cpu_seconds():
    clock = builds.Clock()
    clock.add(12.34)
    clock.add(1.0)
    figures = clock.figures()
    assert figures["cpu_seconds"] == 13.3
    assert 0 <= figures["build_seconds"] < 5


# The iroh relay's cache entry.

def test_the_iroh_relay_is_built_without_optimisation_or_link_time_optimisation():
    assert iroh_build.PROFILE["CARGO_PROFILE_RELEASE_OPT_LEVEL"] == "0"
    assert iroh_build.PROFILE["CARGO_PROFILE_RELEASE_LTO"] == "off"
    assert iroh_build.PROFILE["CARGO_PROFILE_RELEASE_DEBUG"] == "0"
    # Only the profile is lighter: the crate's features are still the pinned ones.
    pin = json.loads((ROOT / "nixos/pkgs/iroh-relay/version.json").read_text())
    assert iroh_build.pinned()["features"] == pin["features"] == ["server"]


def test_the_iroh_cache_entry_changes_with_the_recipe_and_the_profile():
    now = iroh_build._stamp("0.35.0", ["server"])
    assert now != iroh_build._stamp("0.35.0", ["server"], recipe="1")
    optimised = {**iroh_build.PROFILE, "CARGO_PROFILE_RELEASE_OPT_LEVEL": "3"}
    assert now != iroh_build._stamp("0.35.0", ["server"], profile=optimised)
    assert now != iroh_build._stamp("0.35.0", ["server", "metrics"])
    assert iroh_build.cache_entry("0.35.0", ["server"], Path("/c")) == Path(f"/c/iroh-relay-0.35.0-{now}")


def test_a_binary_of_the_earlier_recipe_is_not_taken_for_the_new_one(tmp_path):
    pin = iroh_build.pinned()
    old = tmp_path / f"iroh-relay-{pin['version']}"
    (old / "bin").mkdir(parents=True)
    (old / "bin/iroh-relay").write_bytes(b"\x7fELF")
    (old / ".complete").write_text(iroh_build._stamp(pin["version"], pin["features"], recipe="1") + "\n")
    assert iroh_build.cached_binary(tmp_path) is None

    entry = iroh_build.cache_entry(pin["version"], pin["features"], tmp_path)
    (entry / "bin").mkdir(parents=True)
    (entry / "bin/iroh-relay").write_bytes(b"\x7fELF")
    assert iroh_build.cached_binary(tmp_path) is None, "no .complete marker yet"
    (entry / ".complete").write_text(iroh_build._stamp(pin["version"], pin["features"]) + "\n")
    assert iroh_build.cached_binary(tmp_path) == entry / "bin/iroh-relay"


def test_the_iroh_build_log_is_in_the_partial_entry(tmp_path):
    pin = iroh_build.pinned()
    entry = iroh_build.cache_entry(pin["version"], pin["features"], tmp_path)
    assert iroh_build.build_log(tmp_path) == tmp_path / f"{entry.name}.partial" / "build.log"

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from chatmaild.config import Config
from chatmaild.syslimits import Verdict, free_disk_mb, has_sufficient_resources, read_available_memory_mb

MEMINFO = """\
MemTotal:        4000000 kB
MemFree:          300000 kB
MemAvailable:    {available} kB
Buffers:           10000 kB
"""


@pytest.fixture
def meminfo(tmp_path: Path) -> Callable[[int], Path]:
    def write(available_kib: int) -> Path:
        path = tmp_path / "meminfo"
        path.write_text(MEMINFO.format(available=available_kib))
        return path

    return write


def statvfs_with_free_mb(free_mb: int) -> Callable[[str | Path], os.statvfs_result]:
    def statvfs(path: str | Path) -> os.statvfs_result:
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, f_flag, f_namemax
        blocks = free_mb * 256  # 4 KiB blocks
        return os.statvfs_result((4096, 4096, blocks * 2, blocks + 100, blocks, 0, 0, 0, 0, 255))

    return statvfs


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    cfg = make_config(max_load_1m=4, min_available_memory="200M", min_free_disk_space="1G")
    cfg.mailboxes_dir.mkdir(parents=True)
    return cfg


def check(
    config: Config,
    meminfo: Callable[[int], Path],
    *,
    load: float = 0.5,
    mem_mb: int = 1000,
    disk_mb: int = 5000,
) -> Verdict:
    return has_sufficient_resources(
        config,
        loadavg=lambda: (load, load, load),
        meminfo_path=meminfo(mem_mb * 1024),
        statvfs=statvfs_with_free_mb(disk_mb),
    )


def test_a_relay_with_room_to_spare_accepts_new_accounts(config: Config, meminfo) -> None:
    assert check(config, meminfo) == Verdict(True)


def test_load_above_max_load_1m_rejects(config: Config, meminfo, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        verdict = check(config, meminfo, load=4.01)

    assert not verdict.ok
    assert verdict.reason == "load avg 4.01 > 4.0"
    assert "registration rejected: load avg 4.01 > 4.0" in caplog.text


def test_load_equal_to_the_limit_is_still_accepted(config: Config, meminfo) -> None:
    assert check(config, meminfo, load=4.0).ok


def test_available_memory_below_the_floor_rejects(config: Config, meminfo) -> None:
    verdict = check(config, meminfo, mem_mb=199)

    assert not verdict.ok
    assert verdict.reason == "available memory 199MB < 200MB"


def test_free_disk_below_the_floor_rejects_and_names_the_directory(config: Config, meminfo) -> None:
    verdict = check(config, meminfo, disk_mb=1023)

    assert not verdict.ok
    assert verdict.reason == f"free disk 1023MB < 1024MB on {config.mailboxes_dir}"


def test_load_is_checked_before_memory_and_disk(config: Config, meminfo) -> None:
    verdict = check(config, meminfo, load=99, mem_mb=1, disk_mb=1)

    assert verdict.reason.startswith("load avg")


def test_unreadable_load_is_ignored_but_memory_and_disk_still_count(
    config: Config, meminfo, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> tuple[float, float, float]:
        raise OSError("no load average here")

    with caplog.at_level(logging.WARNING):
        verdict = has_sufficient_resources(
            config, loadavg=broken, meminfo_path=meminfo(10**6), statvfs=statvfs_with_free_mb(10)
        )

    assert "ignoring unreadable system limit: load average: no load average here" in caplog.text
    assert verdict.reason.startswith("free disk 10MB")


def test_missing_meminfo_is_ignored_with_a_warning(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        verdict = has_sufficient_resources(
            config,
            loadavg=lambda: (0.0, 0.0, 0.0),
            meminfo_path=tmp_path / "absent",
            statvfs=statvfs_with_free_mb(5000),
        )

    assert verdict.ok
    assert "ignoring unreadable system limit: available memory" in caplog.text


def test_deleted_mailboxes_dir_makes_disk_unreadable_not_full(
    config: Config, meminfo, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.rmtree(config.mailboxes_dir)

    with caplog.at_level(logging.WARNING):
        verdict = has_sufficient_resources(
            config, loadavg=lambda: (0.0, 0.0, 0.0), meminfo_path=meminfo(10**6)
        )

    assert verdict.ok
    assert f"ignoring unreadable system limit: free disk on {config.mailboxes_dir}" in caplog.text


def test_huge_requirements_reject_on_the_real_system(make_config: Callable[..., Config]) -> None:
    config = make_config(min_available_memory="99999999G")
    config.mailboxes_dir.mkdir(parents=True)

    verdict = has_sufficient_resources(config, loadavg=lambda: (0.0, 0.0, 0.0))

    assert not verdict.ok
    assert verdict.reason.startswith("available memory")


def test_meminfo_without_mem_available_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal: 100 kB\n")

    with pytest.raises(ValueError, match=f"{path}: no MemAvailable line"):
        read_available_memory_mb(path)


def test_free_disk_counts_what_unprivileged_users_may_use() -> None:
    assert free_disk_mb("/", statvfs_with_free_mb(300)) == 300

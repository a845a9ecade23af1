"""FileDict: JSON state on disk, safe against concurrent writers and crashes."""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path

import pytest

from chatmaild.filedict import FileDict, write_bytes_atomic


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_a_missing_file_reads_as_an_empty_dict(tmp_path):
    assert FileDict(tmp_path / "state.json").read() == {}


def test_modifications_are_written_back_without_temporary_files(tmp_path):
    filedict = FileDict(tmp_path / "state.json")
    with filedict.modify() as data:
        data["tokens"] = {"a": 1}
    assert filedict.read() == {"tokens": {"a": 1}}
    assert leftovers(tmp_path) == []
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600


def test_a_corrupt_file_reads_as_empty_with_a_warning(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_bytes(b"\x00\xff{not json")
    with caplog.at_level(logging.WARNING, logger="chatmaild.filedict"):
        assert FileDict(path).read() == {}
    assert "corrupt JSON" in caplog.text


def test_json_that_is_not_an_object_reads_as_empty(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("[1, 2, 3]")
    assert FileDict(path).read() == {}


def test_a_failing_modification_leaves_the_file_unchanged(tmp_path):
    filedict = FileDict(tmp_path / "state.json")
    with filedict.modify() as data:
        data["kept"] = True
    with pytest.raises(RuntimeError), filedict.modify() as data:
        data["lost"] = True
        raise RuntimeError("crash in the middle")
    assert filedict.read() == {"kept": True}


def test_concurrent_writers_never_lose_an_update(tmp_path):
    path = tmp_path / "counter.json"

    def increment() -> None:
        for _ in range(20):
            with FileDict(path).modify() as data:
                data["count"] = data.get("count", 0) + 1

    threads = [threading.Thread(target=increment) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert FileDict(path).read() == {"count": 200}
    assert leftovers(tmp_path) == []


def test_concurrent_atomic_writes_leave_one_complete_version(tmp_path):
    path = tmp_path / "data"
    contents = [f"writer {i} ".encode() * 1000 for i in range(30)]
    threads = [threading.Thread(target=write_bytes_atomic, args=(path, c)) for c in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_bytes() in contents
    assert leftovers(tmp_path) == []

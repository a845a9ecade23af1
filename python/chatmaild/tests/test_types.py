"""The package type-checks with mypy under the settings in pyproject.toml.

Type hints that no tool reads drift from the code; running the checker as a unit test keeps
them honest wherever the tests run. A missing mypy is a failure, not a skip: a check that
silently does not run would pass for the wrong reason.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "src" / "chatmaild"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for this module, outside the source tree, so the second run is quick."""
    return tmp_path_factory.mktemp("mypy-cache")


def run_mypy(project: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run mypy as CI would: from the project directory, with its pyproject.toml."""
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed in this Python; tools/install-deps installs it")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(project / "pyproject.toml"),
            "--cache-dir",
            str(cache_dir),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_package_source_has_no_type_errors(cache_dir: Path) -> None:
    proc = run_mypy(PROJECT, cache_dir)
    assert proc.returncode == 0, f"mypy found errors:\n{proc.stdout}{proc.stderr}"
    # The configuration must point at the whole package, not at an empty or partial tree.
    modules = len(list(PACKAGE.glob("*.py")))
    assert f"no issues found in {modules} source files" in proc.stdout, proc.stdout


def test_type_check_rejects_a_mistyped_and_an_unannotated_function(tmp_path: Path, cache_dir: Path) -> None:
    shutil.copy(PROJECT / "pyproject.toml", tmp_path)
    shutil.copytree(PACKAGE, tmp_path / "src" / "chatmaild")
    (tmp_path / "src" / "chatmaild" / "zz_mistyped.py").write_text(
        'def port() -> int:\n    return "25"\n\n\ndef untyped(x):\n    return x\n'
    )
    proc = run_mypy(tmp_path, cache_dir)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    wrong_return = 'zz_mistyped.py:2: error: Incompatible return value type (got "str", expected "int")'
    assert wrong_return in proc.stdout, proc.stdout
    assert "zz_mistyped.py:5: error: Function is missing a type annotation" in proc.stdout, proc.stdout

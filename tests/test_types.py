"""mypy passes on the package, at the strictness [tool.mypy] in pyproject.toml sets (every function
body checked, typed or not; unused ignores are errors), and that configuration catches an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_package_type_checks() -> None:
    out = _mypy()  # the packages [tool.mypy] names: themis
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]


def test_mypy_config_catches_errors_in_untyped_functions(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    # Untyped, so plain mypy would not look inside; check_untyped_defs does.
    bad.write_text("def f():\n    n: int = 'one'\n    return n\n\n\nx = 1  # type: ignore\n")
    out = _mypy(str(bad))
    assert out.returncode == 1, out.stdout
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in out.stdout
    assert 'Unused "type: ignore" comment' in out.stdout

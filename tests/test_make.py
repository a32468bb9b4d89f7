"""The newcomer's two commands: `make run` and `make test` install what they need first, and
install nothing (quickly) once it is there."""

from __future__ import annotations

import runpy
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn_service import ROOT


def _dry_run(target: str) -> str:
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_run_and_test_install_what_they_need_first() -> None:
    run, test = _dry_run("run"), _dry_run("test")
    pip = 'scripts/python-packages-ok.py || python3 -m pip install -e ".[test]"'
    assert pip in run and run.index(pip) < run.index("gunicorn")
    for step in (pip, "install-system-packages.sh", "install-ferretdb.sh"):
        assert step in test and test.index(step) < test.index("pytest")


def _missing() -> Any:
    return runpy.run_path(str(ROOT / "scripts" / "python-packages-ok.py"))["missing"]


def test_once_installed_they_only_check() -> None:
    if _missing()(ROOT / "pyproject.toml"):
        # e.g. a worktree while rybbit-track is installed editable from another checkout:
        # running make here would reinstall it from this one for every checkout.
        pytest.skip("this checkout's packages are not installed; make would install them")
    started = time.monotonic()
    result = subprocess.run(
        ["make", "python-packages", "system-packages", "ferretdb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install" not in result.stdout and "Successfully installed" not in result.stdout
    assert time.monotonic() - started < 10


def test_a_missing_requirement_means_install(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "rybbit-track"\ndependencies = [\n'
        '  "flask>=1.0", "no-such-package-for-rybbit>=1", "pytest>=999",\n'
        # an extra's requirements count (PySocks is not installed here)...
        '  "requests[socks]",\n'
        # ...and a requirement whose marker does not apply here does not.
        "  \"no-such-package-either; python_version < '3'\",\n]\n"
    )
    found = sorted(text.split(" ")[0] for text in _missing()(pyproject))
    assert found == [
        "PySocks!=1.5.7,>=1.5.6",
        "no-such-package-for-rybbit>=1",
        "pytest>=999",
        # installed, but editable from another folder than tmp_path: not this checkout's
        "rybbit-track",
    ]

"""The newcomer's two commands: `make run` and `make test` install what they need first, and
install nothing (quickly) once it is there."""

from __future__ import annotations

import runpy
import subprocess
import time
from pathlib import Path

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


def test_once_installed_they_only_check() -> None:
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
    missing = runpy.run_path(str(ROOT / "scripts" / "python-packages-ok.py"))["missing"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "rybbit-track"\n'
        'dependencies = ["flask>=1.0", "no-such-package-for-rybbit>=1", "pytest>=999"]\n'
    )
    assert [text.split(" ")[0] for text in missing(pyproject)] == [
        "no-such-package-for-rybbit>=1",
        "pytest>=999",
    ]

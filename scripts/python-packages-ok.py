"""Exit 0 when this checkout's Python packages are installed (rybbit-track itself, and every
requirement of pyproject.toml with its test extra, at a version that satisfies it); 1 when
anything is missing, so that `make run`/`make test` know to run pip. Standard library only,
plus `packaging` when present (without it, the answer is "install")."""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


def missing(pyproject: Path) -> list[str]:
    """The requirements of ``pyproject`` (a pyproject.toml) that are not installed."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ["packaging"]
    project = tomllib.loads(pyproject.read_text())
    wanted = [project["project"]["name"], *project["project"]["dependencies"]]
    wanted += project["project"].get("optional-dependencies", {}).get("test", [])
    absent = []
    for text in wanted:
        requirement = Requirement(text)
        try:
            installed = distribution(requirement.name).version
        except PackageNotFoundError:
            absent.append(text)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            absent.append(f"{text} (have {installed})")
    return absent


if __name__ == "__main__":
    absent = missing(Path(__file__).resolve().parent.parent / "pyproject.toml")
    if absent:
        print("to install: " + ", ".join(absent))
    sys.exit(1 if absent else 0)

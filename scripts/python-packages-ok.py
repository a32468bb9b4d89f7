"""Exit 0 when this checkout's Python packages are installed; 1 when anything is missing, so
that `make run`/`make test` know to run pip. Installed means: rybbit-track installed editable
from this very checkout (another worktree's install would import that tree's code), and every
requirement of pyproject.toml with its test extra, and theirs in turn (extras included, e.g.
``flask-limiter[redis]`` needs ``redis``), at versions that satisfy them, wherever their
environment markers apply. Standard library only, plus `packaging` when present (without it,
the answer is "install")."""

from __future__ import annotations

import json
import sys
import tomllib
from importlib.metadata import Distribution, PackageNotFoundError, distribution, distributions
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


def missing(pyproject: Path) -> list[str]:
    """What is not installed as ``pyproject`` (a pyproject.toml) requires, as text."""
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:
        return ["packaging"]
    project = tomllib.loads(pyproject.read_text())["project"]
    absent = _own_install(project["name"], pyproject.parent)
    wanted = [*project.get("dependencies", [])]
    wanted += project.get("optional-dependencies", {}).get("test", [])
    # (requirement, the extra its marker is evaluated with: "" for top-level ones)
    todo = [(Requirement(text), "") for text in wanted]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in done:
            continue
        done.add(key)
        try:
            found = distribution(requirement.name)
        except PackageNotFoundError:
            absent.append(_plain(requirement))
            continue
        if not requirement.specifier.contains(found.version, prereleases=True):
            absent.append(f"{_plain(requirement)} (have {found.version})")
            continue
        for text in found.requires or []:
            for wanted_extra in ("", *requirement.extras):
                todo.append((Requirement(text), wanted_extra))
    return absent


def _plain(requirement: Any) -> str:
    """The requirement without its marker (it applied): what pip would be asked for."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def _own_install(name: str, checkout: Path) -> list[str]:
    """[] when ``name`` is installed editable from ``checkout``, else what is wrong."""
    # The checkout's own rybbit_track.egg-info (a by-product of the editable build) is found
    # first when the checkout is on sys.path (pytest, python -c); pip's record of the install
    # is the one with a direct_url.json.
    found_all: list[Distribution] = list(distributions(name=name))
    if not found_all:
        return [name]
    found = next((d for d in found_all if d.read_text("direct_url.json")), found_all[0])
    direct = json.loads(found.read_text("direct_url.json") or "{}")
    url = urlsplit(direct.get("url", ""))
    source = Path(unquote(url.path)) if url.scheme == "file" else None
    editable = direct.get("dir_info", {}).get("editable", False)
    if not editable or source is None or source.resolve() != checkout.resolve():
        return [f"{name} (installed from {source or 'an index'}, not editable from {checkout})"]
    return []


if __name__ == "__main__":
    absent = missing(Path(__file__).resolve().parent.parent / "pyproject.toml")
    if absent:
        print("to install: " + ", ".join(absent))
    sys.exit(1 if absent else 0)

"""npm packages the tests use as real parts (Rybbit's browser SDK, ua-parser-js as an oracle),
fetched with `npm pack` at test time into a per-machine cache outside git, never committed
(both are AGPL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest


def npm_package(name: str, version: str, marker: str) -> Path:
    """The unpacked package ``name@version`` (its ``package`` folder), fetched once per machine;
    ``marker`` is a file inside it that shows a complete earlier fetch."""
    package = _cache_dir() / f"{name.strip('@').replace('/', '-')}-{version}" / "package"
    if (package / marker).is_file():
        return package
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed for {name}, which these tests run")
    package.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=package.parent) as scratch:
        subprocess.run(
            ["npm", "pack", f"{name}@{version}", "--pack-destination", scratch],
            check=True,
            capture_output=True,
            timeout=300,
        )
        (tarball,) = Path(scratch).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                archive.extractall(scratch, filter="data")
            else:
                archive.extractall(scratch)  # noqa: S202 - npm's own tarball
        # Renamed into place whole, so a concurrent or interrupted run never sees half of it.
        try:
            os.rename(Path(scratch) / "package", package)
        except OSError:
            if not package.is_dir():
                raise
    return package


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rybbit-track"

"""Processes the benchmarks run against: FerretDB, Redis and gunicorn on loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pymongo
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(Exception):  # not up yet
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


def ferretdb_binary() -> str:
    found = shutil.which("ferretdb")
    if found:
        return found
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout
    candidate = Path(gopath.strip() or Path.home() / "go") / "bin" / "ferretdb"
    if not candidate.exists():
        sys.exit("no ferretdb binary: run `make setup` (or pass --mongo-uri)")
    return str(candidate)


@contextlib.contextmanager
def ferretdb(state: Path) -> Iterator[str]:
    """A FerretDB (SQLite back end) on a free port; yields its URI."""
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            ferretdb_binary(),
            "--handler=sqlite",
            f"--sqlite-url=file:{state}/",
            f"--listen-addr=127.0.0.1:{port}",
            "--debug-addr=127.0.0.1:0",
            "--telemetry=disable",
            f"--state-dir={state}",
            "--log-level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
    try:
        _wait(lambda: client.admin.command("ping"), 20, "FerretDB")
        yield uri
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server: run `make setup`")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(
            lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, 10, "Redis"
        )
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Gunicorn:
    def __init__(self, proc: subprocess.Popen[bytes], base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url

    def worker_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry))
        return sorted(pids)

    def worker_memory_mb(self) -> list[dict[str, float]]:
        """Per worker: RSS, its split into private (anonymous) memory and file-backed pages
        (the code, and the memory-mapped GeoIP database, which workers share), and PSS (shared
        pages divided among the processes that map them)."""
        sizes = []
        for pid in self.worker_pids():
            fields = {}
            for status in ("status", "smaps_rollup"):
                for line in Path(f"/proc/{pid}/{status}").read_text().splitlines():
                    name, _, value = line.partition(":")
                    if name in ("VmRSS", "RssAnon", "RssFile", "Pss"):
                        fields[name] = round(int(value.split()[0]) / 1024, 1)
            sizes.append(
                {
                    "rss": fields["VmRSS"],
                    "anon": fields["RssAnon"],
                    "file": fields["RssFile"],
                    "pss": fields["Pss"],
                }
            )
        return sizes


def processes_named(name: str) -> list[int]:
    """Running processes whose command name is ``name``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def gunicorn(app: str, env: dict[str, str], log_path: Path) -> Iterator[Gunicorn]:
    """gunicorn with the project's gunicorn.conf.py serving ``app``; ready when it answers."""
    port = free_port()
    # Only what the benchmark sets: settings in the caller's shell would skew the figures.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RYBBIT_") and name not in ("MONGO_URI", "RATELIMIT_STORAGE_URI")
    }
    env = {**inherited, **env, "RYBBIT_BIND": f"127.0.0.1:{port}"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(lambda: requests.get(f"{base}/healthz", timeout=1).status_code < 500, 60, app)
            yield Gunicorn(proc, base)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

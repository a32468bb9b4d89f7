"""A real gunicorn serving the app on a loopback port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdefghij"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Service:
    def __init__(self, base_url: str, env: dict[str, str], log_path: Path) -> None:
        self.base_url = base_url
        self.env = env
        self.log_path = log_path
        self.master_pid = 0

    def worker_processes(self) -> list[int]:
        """Pids of the master's live worker processes."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.master_pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def log_records(self) -> list[dict[str, Any]]:
        """Every complete line gunicorn and the app logged so far, parsed (each is a JSON
        object)."""
        complete = self.log_path.read_text().split("\n")[:-1]  # the last may be half-written
        return [json.loads(line) for line in complete if line]

    def worker_pids(self, status: int) -> set[str]:
        """Pids of the workers that answered ``status`` on /api/track, from the request log."""
        return {
            str(record["pid"])
            for record in self.log_records()
            if record.get("logger") == "rybbit.request"
            and record.get("path") == "/api/track"
            and record.get("status") == status
        }

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(
            method, f"{self.base_url}/api/admin{path}", json=body, headers=ADMIN, timeout=10
        )
        assert response.status_code < 300, response.text
        return response.json()

    def track_many(self, key: dict[str, Any], count: int = 40, **fields: Any) -> list[Any]:
        """``count`` events on fresh connections from several threads, so both workers answer."""

        def send(i: int) -> Any:
            body = {"api_key": key["api_key"], "site_id": key["site_id"], **fields}
            return requests.post(f"{self.base_url}/api/track", json=body, timeout=10)

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(send, range(count)))

    def flask(self, *args: str) -> str:
        """Run a ``flask --app app`` command against the same instance and store."""
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@contextlib.contextmanager
def run_service(
    tmp_path: Path, mongo_uri: str | None, workers: int = 2, **env_overrides: str
) -> Iterator[Service]:
    """gunicorn with ``workers`` workers on a fresh instance folder; stopped on exit."""
    env = {
        **os.environ,
        "RYBBIT_INSTANCE_PATH": str(tmp_path / "instance"),
        "RYBBIT_ADMIN_TOKEN": ADMIN_TOKEN,
        "RYBBIT_LOG_FORMAT": "json",
        **env_overrides,
    }
    for name in ("MONGO_URI", "RATELIMIT_STORAGE_URI"):
        env.pop(name, None)
    if mongo_uri:
        env["MONGO_URI"] = mongo_uri
    env.update(env_overrides)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # Ready when every worker has built its app (each logs its enricher chain once).
        log_path = tmp_path / "gunicorn.log"
        deadline = time.monotonic() + 60
        while log_path.read_text().count("enrichers, in order") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("gunicorn did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        requests.post(f"{base}/api/track", json={}, timeout=5)
        service = Service(base, env, log_path)
        service.master_pid = proc.pid
        yield service
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
    assert output.count("Booting worker") >= workers, output

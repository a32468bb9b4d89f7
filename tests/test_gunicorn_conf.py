"""gunicorn.conf.py's choices that depend on the environment."""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import free_port
from tests.gunicorn_service import run_service

CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in (
        "MONGO_URI",
        "RYBBIT_MONGO_URI",
        "RYBBIT_WORKER_CLASS",
        "RYBBIT_WORKER_CONNECTIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "gevent"),  # the embedded store's writes run off the loop (rybbit/native.py)
        ({"MONGO_URI": "mongodb://db.internal/rybbit"}, "gevent"),
        ({"MONGO_URI": "mongodb://db/x", "RYBBIT_WORKER_CLASS": "gthread"}, "gthread"),
        ({"RYBBIT_WORKER_CLASS": "gthread"}, "gthread"),
    ],
)
def test_worker_class_is_gevent_unless_chosen(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    chosen = settings(monkeypatch, **env)["worker_class"]
    # gthread is gunicorn's threaded worker reading each request whole first (slow clients).
    assert getattr(chosen, "__name__", chosen) == (
        "BufferedThreadWorker" if expected == "gthread" else expected
    )


def test_workers_bound_their_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, RYBBIT_WORKER_CLASS="gevent")["worker_connections"] == 256
    chosen = settings(monkeypatch, RYBBIT_WORKER_CLASS="gevent", RYBBIT_WORKER_CONNECTIONS="10")
    assert chosen["worker_connections"] == 10
    # Threads too: each connection waiting for its request to arrive holds a buffer.
    assert settings(monkeypatch)["worker_connections"] == 256


def test_its_hooks_leave_another_app_alone(tmp_path: Path) -> None:
    """The benchmark's bare Flask app runs under these settings too (bench/throughput.py):
    the hooks that start the spool and flush key usage skip an app that is not this one."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bench.bare_app:app"],
            cwd=CONF.parent,
            env={**os.environ, "RYBBIT_BIND": f"127.0.0.1:{port}", "RYBBIT_WORKERS": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.post(
                    f"http://127.0.0.1:{port}/api/track", json={"x": 1}, timeout=1
                )
                break
            except requests.ConnectionError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert response.json() == {"success": True}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Exception" not in log.read_text()


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NOT A REQUEST LINE\r\n\r\n", 400),
        # Past limit_request_line (4094), yet read whole by its first recv: no reset.
        (b"GET /" + b"a" * 4200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ],
)
def test_requests_gunicorn_cannot_parse_get_the_contracts_json_error(
    tmp_path: Path, worker_class: str, raw: bytes, status: int
) -> None:
    """Not gunicorn's HTML page: every answer of the service is JSON."""
    with run_service(tmp_path, None, workers=1, RYBBIT_WORKER_CLASS=worker_class) as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), answer
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)
    assert error["success"] is False and error["error"], error

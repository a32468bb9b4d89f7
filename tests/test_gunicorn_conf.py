"""gunicorn.conf.py's choices that depend on the environment."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

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

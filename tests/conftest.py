"""Fixtures: apps on a temporary instance folder, over both stores.

The MongoDB-wire server is the one named by ``TEST_MONGO_URI``; without it, a FerretDB binary
(on PATH or in Go's bin folder, as ``make setup`` builds it) is started for the session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pymongo
import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import create_app, delivery, keys, sites
from rybbit.enrichment import Enricher, EnrichmentContext
from rybbit.plugin_loader import RUNNER_KEY
from rybbit.storage import EventQuery, Storage, get_store

STORES = ["embedded", "mongo"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _find_ferretdb() -> str | None:
    found = shutil.which("ferretdb")
    if found:
        return found
    gopath = (
        subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
        if shutil.which("go")
        else ""
    )
    candidate = Path(gopath or Path.home() / "go") / "bin" / "ferretdb"
    return str(candidate) if candidate.exists() else None


def wait_for_mongo(uri: str, seconds: float = 20) -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
    deadline = time.monotonic() + seconds
    try:
        while True:
            try:
                client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        client.close()


@contextlib.contextmanager
def ferretdb_process(state: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A FerretDB (SQLite back end, data in ``state``) on ``port``, up and answering."""
    binary = _find_ferretdb()
    if binary is None:
        pytest.fail(
            "No MongoDB-wire server: set TEST_MONGO_URI or run `make setup` to build FerretDB"
        )
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
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
    try:
        wait_for_mongo(f"mongodb://127.0.0.1:{port}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a test may have frozen it
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URI of a running MongoDB-wire server (no database in the path)."""
    uri = os.environ.get("TEST_MONGO_URI")
    if uri:
        wait_for_mongo(uri)
        yield uri.rstrip("/")
        return
    port = free_port()
    with ferretdb_process(tmp_path_factory.mktemp("ferretdb"), port):
        yield f"mongodb://127.0.0.1:{port}"


@contextlib.contextmanager
def redis_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway Redis server (Debian's redis-server, installed by make setup) on ``port``."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("No redis-server on PATH: run `make setup`")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield proc
    finally:
        proc.kill()  # also when the test left it stopped (SIGSTOP)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URI of a throwaway Redis server shared by the session's tests."""
    port = free_port()
    with redis_process(port):
        yield f"redis://127.0.0.1:{port}"


@pytest.fixture
def instance_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "instance"
    monkeypatch.setenv("RYBBIT_INSTANCE_PATH", str(path))
    for name in ("MONGO_URI", "RATELIMIT_STORAGE_URI"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mongo_uri(store_kind: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh database URI for the mongo runs, None for the embedded runs."""
    if store_kind == "embedded":
        yield None
        return
    base = request.getfixturevalue("mongo_server")
    name = f"rybbit_test_{uuid.uuid4().hex[:12]}"
    yield f"{base}/{name}"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(base)
    client.drop_database(name)
    client.close()


@pytest.fixture
def app_config(mongo_uri: str | None) -> dict[str, Any]:
    # LOAD_PLUGINS=[]: third-party plugins installed in this environment stay out of tests.
    return {"TESTING": True, "MONGO_URI": mongo_uri, "LOAD_PLUGINS": []}


@pytest.fixture(autouse=True)
def _ack_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``@pytest.mark.ack_store``: the test is about what happens in the store while the
    request waits (its write errors, its writes' grouping, state read back at once by another
    app): with MongoDB, apps acknowledge once stored rather than once spooled."""
    if request.node.get_closest_marker("ack_store"):
        monkeypatch.setenv("RYBBIT_ACK", "store")


@pytest.fixture
def app(instance_path: Path, app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(app_config)
    yield app
    delivery.close(app)  # stops the spool's shipper (MongoDB runs)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def site(app: Flask) -> dict[str, Any]:
    with app.app_context():
        return sites.create_site(get_store(), name="Example", domain="example.com")


@pytest.fixture
def api_key(app: Flask, site: dict[str, Any]) -> str:
    with app.app_context():
        return str(keys.create_key(get_store(), site["site_id"])["api_key"])


@pytest.fixture
def post(client: FlaskClient, site: dict[str, Any], api_key: str) -> Any:
    """POST an event with this test's key and site filled in (unless overridden or removed)."""

    def _post(path: str = "/api/track", **fields: Any) -> Any:
        body = {"api_key": api_key, "site_id": site["site_id"], **fields}
        body = {k: v for k, v in body.items() if v is not ...}
        return client.post(path, json=body)

    return _post


@pytest.fixture
def stored_events(app: Flask) -> Any:
    """All stored events, oldest first."""

    def _events() -> list[dict[str, Any]]:
        delivery.settle(app)  # with MongoDB, what was acknowledged is shipped first
        with app.app_context():
            return all_events(get_store())

    return _events


def all_events(store: Storage, site_id: str | None = None) -> list[dict[str, Any]]:
    """Every stored event (of one site), oldest first."""
    return store.find_events(EventQuery(site_id=site_id, newest_first=False), limit=1_000_000)


def set_sessions_last_seen(store: Storage, last_seen: datetime, key: str | None = None) -> None:
    """Age visitors' sessions (all, or one) as if their last event was at ``last_seen``: a
    test's shortcut past the interface, on either back end."""
    from rybbit.storage import MongoStorage, SQLiteStorage
    from rybbit.storage.codec import to_ms

    if isinstance(store, MongoStorage):
        with store.op():
            store.db["sessions"].update_many(
                {} if key is None else {"_id": key}, {"$set": {"last_seen": last_seen}}
            )
    else:
        assert isinstance(store, SQLiteStorage)
        where, params = ("", ()) if key is None else (" WHERE id = ?", (key,))
        with store.connect() as conn:
            conn.execute(f"UPDATE sessions SET last_seen = ?{where}", (to_ms(last_seen), *params))


@pytest.fixture(params=["store", "redis"])
def session_state(request: pytest.FixtureRequest) -> str:
    """Where the sessions enricher keeps its state, for tests whose behaviour holds for both
    (their app_config adds ``sessions_storage``)."""
    return str(request.param)


def sessions_storage(request: pytest.FixtureRequest, state: str) -> dict[str, Any]:
    """The setting for ``state`` ("store", or "redis": the session's Redis, emptied of the
    session state earlier tests left, since site ids repeat from test to test)."""
    if state == "store":
        return {"SESSIONS_STORAGE_URI": "store"}
    uri = request.getfixturevalue("redis_server")
    forget_redis_sessions(uri)
    return {"SESSIONS_STORAGE_URI": uri}


def sessions_enricher(app: Flask) -> Any:
    """``app``'s sessions enricher (its ``redis`` is None when the state is in the store)."""
    from plugins.sessions import SessionsEnricher

    (found,) = [e for e in app.extensions[RUNNER_KEY].enrichers if isinstance(e, SessionsEnricher)]
    return found


def age_sessions(app: Flask, last_seen: datetime, key: str | None = None) -> None:
    """set_sessions_last_seen wherever ``app`` keeps its sessions: the store or Redis."""
    state = sessions_enricher(app).redis
    if state is None:
        with app.app_context():
            set_sessions_last_seen(get_store(), last_seen, key)
        return
    from rybbit.session_state import KEY_PREFIX
    from rybbit.storage.codec import to_ms

    names = [KEY_PREFIX + key] if key else list(state.client.scan_iter(f"{KEY_PREFIX}*"))
    for name in names:
        state.client.hset(name, "last", to_ms(last_seen))


def forget_redis_sessions(uri: str) -> None:
    """Delete the session state earlier tests left in the Redis at ``uri``."""
    import redis

    from rybbit.session_state import KEY_PREFIX

    client = redis.Redis.from_url(uri)
    names = list(client.scan_iter(f"{KEY_PREFIX}*"))
    if names:
        client.delete(*names)
    client.close()


def insert_raw_events(store: Storage, docs: list[dict[str, Any]]) -> None:
    """Write events straight into the store, past the write path (no purge, no metrics)."""
    from rybbit.storage import MongoStorage, SQLiteStorage

    if isinstance(store, MongoStorage):
        with store.op():
            store.events.insert_many(docs)
    else:
        assert isinstance(store, SQLiteStorage)
        store.import_documents("events", docs)


class FunctionEnricher(Enricher):
    def __init__(self, name: str, function: Any, after: tuple[str, ...] = ()) -> None:
        self.name, self.function, self.after = name, function, after

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        self.function(event, context)


def add_enricher(app: Flask, name: str, function: Any, after: tuple[str, ...] = ()) -> None:
    """Add a one-function enricher to ``app``'s chain (tests only)."""
    app.extensions[RUNNER_KEY].add(FunctionEnricher(name, function, after))

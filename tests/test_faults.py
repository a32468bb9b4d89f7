"""No acknowledged event is ever lost: a worker killed mid-load, the store stopped or frozen.

A load generator posts events with client ``event_id``s from several threads and retries each
until it gets a 200, as a careful client would. Afterwards every event is in the store exactly
once, and nothing but 200 and 503 (or a dropped connection) was ever answered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from rybbit.events import idempotent_id
from tests.conftest import ferretdb_process, free_port
from tests.gunicorn_service import Service, run_service


class RetryingClient:
    """Posts ``count`` events from ``threads`` threads, each retried until acknowledged."""

    def __init__(
        self, service: Service, site_id: str, api_key: str, count: int, pause: float = 0
    ) -> None:
        self.url = f"{service.base_url}/api/track"
        self.site_id, self.api_key = site_id, api_key
        self.event_ids = [f"ev-{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]
        self.acked: set[str] = set()
        self.outcomes: Counter[str] = Counter()
        self.slowest_failure = 0.0
        self.pause = pause  # between one thread's events, to keep the load going a while
        self.attempts: list[tuple[float, float, str]] = []  # (started, ended, outcome)
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, threads: int = 8) -> None:
        self._threads = [threading.Thread(target=self._work) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def join(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "the load did not finish in time"

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _take(self) -> str | None:
        with self._lock:
            if self._next == len(self.event_ids):
                return None
            self._next += 1
            return self.event_ids[self._next - 1]

    def _work(self) -> None:
        session = requests.Session()
        while not self.stop.is_set() and (event_id := self._take()) is not None:
            body = {
                "api_key": self.api_key,
                "site_id": self.site_id,
                "pathname": f"/{event_id}",
                "event_id": event_id,
            }
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(self.url, json=body, timeout=10)
                    outcome = str(response.status_code)
                    if response.status_code == 503:
                        assert response.headers.get("Retry-After")
                        assert response.json()["success"] is False
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                    # Dropped before or while the answer came (a gevent worker killed between
                    # writing the headers and the body): no acknowledgement, so retry.
                    outcome = "connection dropped"
                    session = requests.Session()
                elapsed = time.monotonic() - started
                with self._lock:
                    self.attempts.append((started, started + elapsed, outcome))
                    self.outcomes[outcome] += 1
                    if outcome == "200":
                        self.acked.add(event_id)
                    else:
                        self.slowest_failure = max(self.slowest_failure, elapsed)
                if outcome == "200":
                    break
                time.sleep(0.05)
            time.sleep(self.pause)

    def wait_for_acks(self, count: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self.acked_count() < count:
            assert time.monotonic() < deadline, f"only {self.acked_count()} acknowledged"
            time.sleep(0.02)


def stored_ids(mongo_uri: str, site_id: str) -> Counter[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    try:
        events = client.get_default_database()["events"]
        return Counter(doc["_id"] for doc in events.find({"site_id": site_id}, {"_id": 1}))
    finally:
        client.close()


def assert_each_acked_event_stored_once(load: RetryingClient, mongo_uri: str, site_id: str) -> None:
    assert load.acked == set(load.event_ids), "every event was acknowledged in the end"
    expected = {idempotent_id(site_id, event_id) for event_id in load.event_ids}
    # Acknowledged at the spool (the default), an event reaches MongoDB a moment later; a
    # killed worker's spool is shipped by the worker that adopts it.
    deadline = time.monotonic() + 30
    while set(stored := stored_ids(mongo_uri, site_id)) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(stored) == expected
    assert all(count == 1 for count in stored.values())
    assert set(load.outcomes) <= {"200", "503", "connection dropped"}, load.outcomes


def credentials(service: Service) -> tuple[str, str]:
    site = service.admin("POST", "/sites", {"name": "Faults", "domain": "faults.example"})
    key = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})
    return str(site["site_id"]), str(key["api_key"])


def test_a_worker_killed_under_load_loses_no_acknowledged_event(
    tmp_path: Path, mongo_server: str
) -> None:
    mongo_uri = f"{mongo_server}/faults_{uuid.uuid4().hex[:8]}"
    with run_service(tmp_path, mongo_uri, workers=2, RYBBIT_RATE_LIMIT="off") as service:
        site_id, api_key = credentials(service)
        load = RetryingClient(service, site_id, api_key, count=400)
        load.start()
        load.wait_for_acks(100)
        victim = service.worker_processes()[0]
        # ACK=spool (the default): the victim's acknowledged events may be only in its spool.
        assert "once in the spool" in service.log_path.read_text()
        spool = tmp_path / "instance" / "spool"
        assert [p for p in spool.iterdir() if p.name.startswith(f"{victim}-")]
        os.kill(victim, signal.SIGKILL)
        load.join(120)
        assert victim not in service.worker_processes()
        # Adopted by a live worker (the one started in its place, at once), shipped, removed.
        deadline = time.monotonic() + 20
        while [p for p in spool.iterdir() if p.name.startswith(f"{victim}-")]:
            assert time.monotonic() < deadline, "the killed worker's spool was not adopted"
            time.sleep(0.2)
    assert_each_acked_event_stored_once(load, mongo_uri, site_id)


def test_sigterm_finishes_in_flight_requests_and_loses_no_acknowledged_event(
    tmp_path: Path, mongo_server: str
) -> None:
    mongo_uri = f"{mongo_server}/graceful_{uuid.uuid4().hex[:8]}"
    with run_service(tmp_path, mongo_uri, workers=2, RYBBIT_RATE_LIMIT="off") as service:
        site_id, api_key = credentials(service)
        load = RetryingClient(service, site_id, api_key, count=5000)
        load.start()
        load.wait_for_acks(100)
        sigterm_at = time.monotonic()
        os.kill(service.master_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while service.worker_processes():
            assert time.monotonic() < deadline, "workers did not exit within graceful_timeout"
            time.sleep(0.05)
        load.stop.set()
        load.join(30)
        log = service.log_path.read_text()

    in_flight = [a for a in load.attempts if a[0] < sigterm_at < a[1]]
    finished = [a for a in in_flight if a[2] == "200"]
    assert finished, "requests being served at SIGTERM were answered, not cut off"
    assert {a[2] for a in load.attempts} <= {"200", "connection dropped"}, load.outcomes
    assert "Worker exiting" in log
    stored = stored_ids(mongo_uri, site_id)
    acked = {idempotent_id(site_id, event_id) for event_id in load.acked}
    assert acked <= set(stored), "every acknowledged event is stored"
    assert all(count == 1 for count in stored.values())


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_a_store_outage_gives_503s_then_recovers_without_losing_events(
    tmp_path: Path, outage: str
) -> None:
    port = free_port()
    state = tmp_path / "ferretdb"
    mongo_uri = f"mongodb://127.0.0.1:{port}/outage"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ferretdb_process(state, port))
        service = stack.enter_context(
            run_service(
                tmp_path,
                mongo_uri,
                workers=2,
                RYBBIT_RATE_LIMIT="off",
                RYBBIT_MONGO_TIMEOUT_MS="500",
                # Acknowledged once stored: an outage is answered 503 (with the default
                # ACK=spool it is absorbed instead: tests/test_spool_faults.py).
                RYBBIT_ACK="store",
            )
        )
        site_id, api_key = credentials(service)
        # About 400 events/s at most: the load outlasts the outage on any machine.
        load = RetryingClient(service, site_id, api_key, count=3000, pause=0.015)
        load.start(threads=6)
        load.wait_for_acks(60)
        assert load.acked_count() < 600, "the load must still be running during the outage"

        if outage == "stopped":
            server.kill()  # a crash: SIGTERM would let FerretDB drain its connections first
            server.wait(timeout=10)
        else:
            server.send_signal(signal.SIGSTOP)
        time.sleep(4)
        acked_while_down = load.acked_count()
        time.sleep(0.5)
        assert load.acked_count() == acked_while_down, "nothing is acknowledged while down"
        if outage == "stopped":
            stack.enter_context(ferretdb_process(state, port))
        else:
            server.send_signal(signal.SIGCONT)
        load.join(120)
        # Requests caught by the outage were told to retry (some answers may come after the
        # restart: a request waits out its timeouts), and none was acknowledged meanwhile.
        assert load.outcomes["503"] > 0, load.outcomes
        # Bounded: MONGO_TIMEOUT_MS is 500 ms, reads time out at 3x that; a request waiting
        # on a grouped write may wait for two of them.
        assert load.slowest_failure < 5, load.slowest_failure
        assert_each_acked_event_stored_once(load, mongo_uri, site_id)

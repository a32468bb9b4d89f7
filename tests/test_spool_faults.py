"""Faults with ACK=spool (the MongoDB default): the spool absorbs what ACK=store answers 503.

Real parts only: a FerretDB of each test's own (killed with SIGKILL, frozen with SIGSTOP), a
real gunicorn, processes killed with -9. tests/test_faults.py has the load generator, the
killed-worker test (in spool mode too) and the ACK=store outage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pymongo
import requests

from rybbit.events import idempotent_id
from tests.conftest import ferretdb_process, free_port
from tests.gunicorn_service import Service, run_service
from tests.test_faults import RetryingClient, credentials, stored_ids

# The store's failures must be seen quickly (the default 2 s would only slow the tests), and
# the site and key documents must expire during the outage (the default is 5 s).
FAST = {
    "RYBBIT_RATE_LIMIT": "off",
    "RYBBIT_MONGO_TIMEOUT_MS": "500",
    "RYBBIT_AUTH_CACHE_SECONDS": "1",
    # No GeoIP database here: geo would keep /readyz at 503 whatever the store does.
    "RYBBIT_PLUGINS_DISABLED": '["geo"]',
}


def metric(service: Service, name: str) -> float:
    """A metric from /metrics, summed over its series (multiprocess mode already sums the
    workers)."""
    text = requests.get(f"{service.base_url}/metrics", timeout=10).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]
    assert values, f"{name} not in /metrics"
    return sum(values)


def wait_until_stored(mongo_uri: str, site_id: str, event_ids: set[str], seconds: float) -> Any:
    """The stored ids once every one of ``event_ids`` is stored (or the deadline passed)."""
    expected = {idempotent_id(site_id, event_id) for event_id in event_ids}
    deadline = time.monotonic() + seconds
    while not expected <= set(stored := stored_ids(mongo_uri, site_id)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return stored


def without_session(mongo_uri: str, site_id: str) -> int:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    try:
        events = client.get_default_database()["events"]
        return int(events.count_documents({"site_id": site_id, "session_id": None}))
    finally:
        client.close()


def sent_ids(load: RetryingClient) -> set[str]:
    """Every event a load thread took: posted at least once (acknowledged or not), or about
    to be when the load stopped; a superset of what may be stored."""
    return set(load.event_ids[: load._next])


def spool_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "instance" / "spool"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_mongodb_killed_for_10_s_under_load_every_request_still_gets_200(
    tmp_path: Path,
) -> None:
    """MongoDB killed (SIGKILL) for 10 s under load: every request is answered 200 (the
    spool takes the events; the site and key are served from the last documents read though
    they expire meanwhile); /readyz stays 200 and /metrics shows the backlog growing and the
    failed shipments; after the restart everything acknowledged is stored exactly once and the
    metrics count it."""
    port = free_port()
    state = tmp_path / "ferretdb"
    mongo_uri = f"mongodb://127.0.0.1:{port}/spool_outage"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ferretdb_process(state, port))
        service = stack.enter_context(run_service(tmp_path, mongo_uri, workers=2, **FAST))
        assert "once in the spool" in service.log_path.read_text()
        site_id, api_key = credentials(service)
        load = RetryingClient(service, site_id, api_key, count=100_000, pause=0.01)
        load.start(threads=6)
        load.wait_for_acks(200)  # both workers have read the site and the key

        server.kill()
        server.wait(timeout=10)
        killed_at = time.monotonic()
        acked_before = load.acked_count()
        time.sleep(5)
        ready = requests.get(f"{service.base_url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["store"].startswith("store unavailable"), checks
        assert checks["spool"]["backlog_events"] > 0, checks
        # Updated by each shipping attempt, which backs off up to 5 s: a second or two old.
        assert metric(service, "rybbit_spool_backlog_events") > 0
        assert metric(service, "rybbit_spool_backlog_bytes") > 0
        assert metric(service, "rybbit_spool_oldest_unshipped_seconds") > 1
        assert metric(service, "rybbit_spool_ship_errors_total") > 0
        time.sleep(max(0.0, 10 - (time.monotonic() - killed_at)))
        acked_while_down = load.acked_count() - acked_before
        stack.enter_context(ferretdb_process(state, port))
        time.sleep(2)
        load.stop.set()
        load.join(30)

        assert set(load.outcomes) == {"200"}, load.outcomes
        # About 6 threads x 50 events/s when unloaded: well above this on any machine.
        assert acked_while_down > 300, acked_while_down
        stored = wait_until_stored(mongo_uri, site_id, load.acked, 30)
        assert set(stored) == {idempotent_id(site_id, e) for e in load.acked}
        assert all(count == 1 for count in stored.values())
        # The metrics agree once the backlog is shipped: every event counted once, none left.
        deadline = time.monotonic() + 10
        while metric(service, "rybbit_spool_shipped_total") < len(load.acked):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert metric(service, "rybbit_spool_shipped_total") == len(load.acked)
        assert metric(service, "rybbit_spool_backlog_events") == 0
        assert metric(service, "rybbit_spool_refused_total") == 0
        # Sessions are resolved at shipping time: the outage made them retry with their
        # batch, never ship an event without one, nor dead-letter it.
        assert without_session(mongo_uri, site_id) == 0
    assert not (tmp_path / "instance" / "spool" / "dead-letter.jsonl").exists()


def test_master_and_workers_killed_then_restarted_ship_every_acknowledged_event_once(
    tmp_path: Path,
) -> None:
    """kill -9 of the master and every worker while MongoDB is frozen (so the spools hold a
    backlog), one spool's tail torn as by a crash mid-write; a restart on the same instance
    folder adopts the dead spools: every acknowledged event is stored exactly once, the torn
    tail is skipped and logged, and the dead spools are removed."""
    port = free_port()
    state = tmp_path / "ferretdb"
    mongo_uri = f"mongodb://127.0.0.1:{port}/spool_restart"
    env = {**FAST, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with ferretdb_process(state, port) as server:
        with run_service(tmp_path, mongo_uri, workers=2, **env) as service:
            site_id, api_key = credentials(service)
            load = RetryingClient(service, site_id, api_key, count=100_000, pause=0.01)
            load.start(threads=6)
            load.wait_for_acks(200)
            server.send_signal(signal.SIGSTOP)
            try:
                backlog_from = load.acked_count()
                load.wait_for_acks(backlog_from + 300)
                workers = service.worker_processes()
                os.kill(service.master_pid, signal.SIGKILL)
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                load.stop.set()
                load.join(30)
            finally:
                server.send_signal(signal.SIGCONT)
            assert not service.worker_processes()
        dead = spool_dirs(tmp_path)
        assert {int(p.name.split("-")[0]) for p in dead} >= set(workers)
        # A crash in the middle of an append leaves a torn record at the end of a segment.
        newest = max(dead[0].glob("*.seg"))
        with open(newest, "ab") as segment:
            segment.write(b"\x40\x00\x00\x00torn")
        # The spools hold a backlog: most of the ~300 acknowledged while MongoDB was frozen.
        # Not all: each shipper had one insert sent into the frozen server's socket, with the
        # records spooled by then, and the server stores those once it runs again.
        assert len(load.acked) - len(stored_ids(mongo_uri, site_id)) >= 100

        with run_service(tmp_path, mongo_uri, workers=2, **env) as restarted:
            stored = wait_until_stored(mongo_uri, site_id, load.acked, 30)
            deadline = time.monotonic() + 20
            while set(spool_dirs(tmp_path)) & set(dead):
                assert time.monotonic() < deadline, "the dead spools were not shipped"
                time.sleep(0.2)
            log = restarted.log_path.read_text()

    acked = {idempotent_id(site_id, e) for e in load.acked}
    assert acked <= set(stored)  # every acknowledged event
    # An event in flight at the kill may be stored unacknowledged; nothing else is stored.
    assert set(stored) <= {idempotent_id(site_id, e) for e in sent_ids(load)}
    assert all(count == 1 for count in stored.values())
    assert "torn tail, skipped 8 bytes" in log
    assert "whose owner is gone" in log


def test_a_full_spool_answers_503_with_retry_after_then_accepts_once_shipped(
    tmp_path: Path,
) -> None:
    """With MongoDB killed, the spool fills up to SPOOL_QUOTA_BYTES: then 503 with
    Retry-After (back-pressure, nothing dropped); once MongoDB is back and the backlog
    shipped, 200 again, and every acknowledged event is stored once."""
    port = free_port()
    state = tmp_path / "ferretdb"
    mongo_uri = f"mongodb://127.0.0.1:{port}/spool_quota"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(ferretdb_process(state, port))
        service = stack.enter_context(
            run_service(tmp_path, mongo_uri, workers=1, RYBBIT_SPOOL_QUOTA_BYTES="16384", **FAST)
        )
        site_id, api_key = credentials(service)
        url = f"{service.base_url}/api/track"
        session = requests.Session()

        def post(event_id: str) -> requests.Response:
            body = {"api_key": api_key, "site_id": site_id, "event_id": event_id}
            return session.post(url, json=body, timeout=10)

        acked: list[str] = []
        assert post("first").status_code == 200
        acked.append("first")
        server.kill()
        server.wait(timeout=10)
        refused = None
        for n in range(500):
            response = post(f"e{n}")
            if response.status_code != 200:
                refused = response
                break
            acked.append(f"e{n}")
        assert refused is not None, "the spool never filled up"
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["success"] is False
        assert 5 < len(acked) < 200, len(acked)  # about 16 KiB of events
        assert post("still-full").status_code == 503  # stays full while MongoDB is away

        stack.enter_context(ferretdb_process(state, port))
        deadline = time.monotonic() + 20
        while (response := post("after")).status_code != 200:
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "not accepting again after MongoDB returned"
            time.sleep(0.2)
        acked.append("after")
        stored = wait_until_stored(mongo_uri, site_id, set(acked), 20)
    assert set(stored) == {idempotent_id(site_id, e) for e in acked}
    assert all(count == 1 for count in stored.values())

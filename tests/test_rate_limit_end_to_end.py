"""The limit holds exactly across gunicorn workers: four sharing Redis, and two sharing the
embedded default (sqlite:// in the instance folder) with no limiter server at all."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from tests.gunicorn_service import Service, run_service

BURST = 100


@pytest.fixture
def service(tmp_path: Path, mongo_server: str, redis_server: str) -> Any:
    with run_service(
        tmp_path,
        f"{mongo_server}/rybbit_test_ratelimit_e2e",
        workers=4,
        RATELIMIT_STORAGE_URI=redis_server,
        RYBBIT_RATE_LIMIT="20 per second",
    ) as running:
        yield running
    pymongo.MongoClient(mongo_server).drop_database("rybbit_test_ratelimit_e2e")


def burst(service: Service, key: dict[str, Any], count: int = BURST) -> tuple[list[int], float]:
    """``count`` requests released together from 20 threads; statuses and wall time."""
    local = threading.local()
    gate = threading.Barrier(20)

    def send(i: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            gate.wait()
        body = {"api_key": key["api_key"], "site_id": key["site_id"], "pathname": f"/{i}"}
        return local.session.post(
            f"{service.base_url}/api/track", json=body, timeout=10
        ).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(send, range(count)))
    return statuses, time.monotonic() - started


def test_one_key_gets_exactly_the_limit_across_workers(service: Service) -> None:
    site = service.admin("POST", "/sites", {"name": "Burst", "domain": "burst.example"})
    key = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})
    other = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})

    statuses, elapsed = burst(service, key)
    print(
        f"burst of {BURST}: {statuses.count(200)} accepted, {statuses.count(429)} limited in {elapsed:.3f}s"
    )
    assert elapsed < 1.0, "the burst must fit in one window for the count to be exact"
    assert statuses.count(200) == 20 and statuses.count(429) == BURST - 20
    answering = service.worker_pids(200) | service.worker_pids(429)
    assert len(answering) >= 2, "the burst was spread over several workers"

    assert [r.status_code for r in service.track_many(other, count=5)] == [200] * 5, (
        "other keys unaffected"
    )
    time.sleep(1.1)
    assert [r.status_code for r in service.track_many(key, count=5)] == [200] * 5, (
        "the next window admits again"
    )


@pytest.fixture
def embedded_service(tmp_path: Path) -> Any:
    # A long window: the count is exact whatever the machine's load makes the burst last.
    with run_service(tmp_path, None, workers=2, RYBBIT_RATE_LIMIT="20 per 30 seconds") as running:
        yield running


def test_two_workers_on_the_embedded_default_share_one_exact_limit(
    embedded_service: Service, tmp_path: Path
) -> None:
    site = embedded_service.admin("POST", "/sites", {"name": "Two", "domain": "two.example"})
    key = embedded_service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})

    statuses, elapsed = burst(embedded_service, key)
    assert elapsed < 30
    assert statuses.count(200) == 20 and statuses.count(429) == BURST - 20, (
        "N + k requests, exactly k refused (per-process counts would admit up to 40)"
    )
    answering = embedded_service.worker_pids(200) | embedded_service.worker_pids(429)
    assert len(answering) == 2, "both workers answered"
    assert (tmp_path / "instance" / "ratelimit.sqlite").exists()

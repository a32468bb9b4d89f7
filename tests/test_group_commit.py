"""Group commit: concurrent requests share one store write, each answered after its own."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from rybbit.delivery import get_delivery
from rybbit.group_commit import GroupCommit
from rybbit.store import StoreUnavailable


class GatedWrites:
    """A write function whose first call waits until the test opens the gate, so that the
    other submitters are known to queue up behind it."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.gate = threading.Event()
        self.fail_first = fail_first
        self.first_started = threading.Event()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if not self.calls:
            self.calls.append(events)
            self.first_started.set()
            self.gate.wait(10)
            if self.fail_first:
                raise StoreUnavailable("ServerSelectionTimeoutError")
            return
        self.calls.append(events)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Limits are read when the app is made: concurrent bursts here stay under them."""
    return {**app_config, "RATE_LIMIT": "1000 per second"}


def _submit_all(committer: GroupCommit, writes: GatedWrites, followers: int) -> list[Any]:
    """Submit one event from a leader thread and ``followers`` more while its write waits;
    return what each submit returned or raised, leader first."""
    outcomes: list[Any] = [None] * (followers + 1)

    def submit(index: int) -> None:
        try:
            committer.submit([{"n": index}])
            outcomes[index] = "ok"
        except Exception as exc:
            outcomes[index] = exc

    leader = threading.Thread(target=submit, args=(0,))
    leader.start()
    assert writes.first_started.wait(5)
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(1, followers + 1)]
    for thread in threads:
        thread.start()
    # Every follower is queued (none can finish before the gate opens).
    deadline = threading.Event()
    for _ in range(100):
        if len(committer._queue) == followers:
            break
        deadline.wait(0.02)
    assert len(committer._queue) == followers
    assert all(outcome is None for outcome in outcomes)
    writes.gate.set()
    for thread in [leader, *threads]:
        thread.join(10)
    return outcomes


def test_waiting_requests_share_the_next_write() -> None:
    writes = GatedWrites()
    committer = GroupCommit(writes, max_items=1000)
    outcomes = _submit_all(committer, writes, followers=12)
    assert outcomes == ["ok"] * 13
    assert [len(call) for call in writes.calls] == [1, 12]
    assert sorted(e["n"] for e in writes.calls[1]) == list(range(1, 13))
    assert (committer.calls, committer.items_done) == (2, 13)


def test_a_group_never_exceeds_max_events() -> None:
    writes = GatedWrites()
    committer = GroupCommit(writes, max_items=5)
    outcomes = _submit_all(committer, writes, followers=12)
    assert outcomes == ["ok"] * 13
    assert [len(call) for call in writes.calls] == [1, 5, 5, 2]


def test_a_failed_write_fails_exactly_the_requests_in_it() -> None:
    writes = GatedWrites(fail_first=True)
    committer = GroupCommit(writes, max_items=1000)
    outcomes = _submit_all(committer, writes, followers=3)
    # The leader's write failed: it gets the error; the followers' write succeeded.
    assert isinstance(outcomes[0], StoreUnavailable)
    assert outcomes[1:] == ["ok"] * 3
    # The store goes on taking writes afterwards.
    committer.submit([{"n": 99}])
    assert writes.calls[-1] == [{"n": 99}]


def test_every_waiter_gets_its_own_copy_of_the_error() -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def failing(events: list[dict[str, Any]]) -> None:
        raise StoreUnavailable("AutoReconnect")

    committer = GroupCommit(failing, max_items=100)

    def submit() -> None:
        barrier.wait()
        try:
            committer.submit([{}])
        except StoreUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 4
    assert len({id(e) for e in errors}) == 4
    assert all(e.args == ("AutoReconnect",) for e in errors)


@pytest.mark.parametrize("store_kind", ["mongo", "embedded"], indirect=True)
@pytest.mark.ack_store
def test_concurrent_requests_are_all_stored_in_fewer_writes(
    app: Flask, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    requests = 60

    def post(index: int) -> int:
        response = app.test_client().post(
            "/api/track",
            json={
                "api_key": api_key,
                "site_id": site["site_id"],
                "pathname": f"/{index}",
                "event_id": f"e{index}",
            },
        )
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(post, range(requests)))
    assert statuses == [200] * requests
    events = stored_events()
    assert sorted(e["pathname"] for e in events) == sorted(f"/{i}" for i in range(requests))
    assert get_delivery(app).group.items_done == requests  # type: ignore[union-attr]


def test_each_submitter_gets_the_results_of_its_own_items() -> None:
    gate = threading.Event()
    started = threading.Event()
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            started.set()
            gate.wait(10)
        return [i * i for i in items]

    committer: GroupCommit[int, int] = GroupCommit(square, max_items=100)
    results: dict[int, Any] = {}

    def submit(base: int, count: int) -> None:
        results[base] = list(committer.submit([base + i for i in range(count)]))

    first = threading.Thread(target=submit, args=(0, 1))
    first.start()
    assert started.wait(5)
    others = [threading.Thread(target=submit, args=(base, 3)) for base in (10, 20, 30)]
    for thread in others:
        thread.start()
    while len(committer._queue) < 3:
        time.sleep(0.01)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(calls) == 2 and len(calls[1]) == 9
    assert results == {
        0: [0],
        10: [100, 121, 144],
        20: [400, 441, 484],
        30: [900, 961, 1024],
    }


def test_an_enricher_finding_the_store_down_gets_a_503_at_once(
    app: Flask, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    from tests.conftest import add_enricher

    def down(event: dict[str, Any], context: Any) -> None:
        raise StoreUnavailable("ServerSelectionTimeoutError")

    add_enricher(app, "needs_store", down)
    response = app.test_client().post(
        "/api/track", json={"api_key": api_key, "site_id": site["site_id"]}
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert stored_events() == []


def test_a_call_returning_too_few_results_fails_its_submitters_without_blocking_others() -> None:
    def short(items: list[int]) -> list[int]:
        return items[:-1]  # one result missing

    committer: GroupCommit[int, int] = GroupCommit(short, max_items=10)
    with pytest.raises(ValueError):
        committer.submit([1, 2])
    # The committer still works for the next caller (no one is left waiting for a leader).
    committer._run = lambda items: list(items)  # type: ignore[method-assign]
    assert list(committer.submit([3])) == [3]


GATHER_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import gevent, json, sys
from rybbit.group_commit import GroupCommit
from rybbit.native import let_others_run

def calls_for(gather):
    calls = []
    def run(items):  # blocks nothing: no other greenlet runs while it does
        calls.append(len(items))
        return [item * 2 for item in items]
    group = GroupCommit(run, 1000, gather)
    results = {}
    def request(n):
        results[n] = group.submit([n])[0]
    gevent.joinall([gevent.spawn(request, n) for n in range(20)])
    assert results == {n: n * 2 for n in range(20)}, results
    return calls

print(json.dumps({"plain": calls_for(None), "gathered": calls_for(let_others_run)}))
"""


def test_under_gevent_one_turn_of_the_loop_gathers_the_ready_requests() -> None:
    """A call that never yields (the embedded store's commit on the loop) could take only its
    leader's items; the leader first lets the ready greenlets queue, and all share one call."""
    out = subprocess.run(
        [sys.executable, "-c", GATHER_UNDER_GEVENT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    calls = json.loads(out.stdout)
    assert calls["plain"] == [1] * 20
    assert calls["gathered"] == [20]


class Killed(BaseException):
    """Stands in for gevent's GreenletExit thrown into a greenlet at shutdown."""


def test_a_leader_interrupted_while_gathering_hands_the_lead_on() -> None:
    """A leader interrupted in its gathering turn (a greenlet killed at gunicorn's shutdown)
    must not leave the others waiting for ever: its own items are not shipped, and the next
    entry leads."""
    calls: list[list[int]] = []
    queued = threading.Event()
    gathers = []

    def gather() -> None:
        gathers.append(1)
        if len(gathers) == 1:  # the first leader: interrupted once the others queued
            assert queued.wait(5)
            raise Killed

    group: GroupCommit[int, int] = GroupCommit(
        lambda items: calls.append(list(items)) or items, 1000, gather
    )
    outcomes: dict[int, Any] = {}

    def request(n: int) -> None:
        try:
            outcomes[n] = group.submit([n])[0]
        except Killed:
            outcomes[n] = "killed"

    leader = threading.Thread(target=request, args=(0,))
    leader.start()
    while not gathers:
        time.sleep(0.001)
    others = [threading.Thread(target=request, args=(n,)) for n in (1, 2)]
    for thread in others:
        thread.start()
    while len(group._queue) < 3:
        time.sleep(0.001)
    queued.set()
    for thread in [leader, *others]:
        thread.join(timeout=5)
    request(3)
    assert outcomes == {0: "killed", 1: 1, 2: 2, 3: 3}
    assert sorted(n for call in calls for n in call) == [1, 2, 3]

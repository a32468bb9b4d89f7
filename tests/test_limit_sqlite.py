"""The sqlite:// limits storage: limits' own strategies on it, and one count for all processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from rybbit.limit_sqlite import SQLiteStorage


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'limits' / 'ratelimit.sqlite'}"


def test_registered_with_limits_by_its_scheme(uri: str) -> None:
    storage = storage_from_string(uri)
    assert isinstance(storage, SQLiteStorage) and storage.check()


def test_a_path_is_required() -> None:
    with pytest.raises(ValueError):
        storage_from_string("sqlite://")


def test_moving_window_through_limits(uri: str) -> None:
    strategy, item = MovingWindowRateLimiter(storage_from_string(uri)), parse("3 per 2 seconds")
    assert [strategy.hit(item, "a") for _ in range(4)] == [True, True, True, False]
    assert strategy.hit(item, "b"), "keys have their own windows"
    stats = strategy.get_window_stats(item, "a")
    assert stats.remaining == 0 and time.time() < stats.reset_time <= time.time() + 2
    assert not strategy.hit(item, "b", cost=3), "a cost over what is left takes nothing"
    assert strategy.get_window_stats(item, "b").remaining == 2
    time.sleep(2.05)
    assert strategy.hit(item, "a"), "the window moved on"


def test_hit_and_window_in_one_call(uri: str) -> None:
    storage = SQLiteStorage(uri)
    before = time.time()
    assert storage.acquire_with_window("k", 2, 60, 1)[::2] == (True, 1)
    acquired, start, count = storage.acquire_with_window("k", 2, 60, 1)
    assert acquired and count == 2 and before <= start <= time.time()
    assert storage.acquire_with_window("k", 2, 60, 1) == (False, start, 2)


def test_fixed_window_clear_and_reset(uri: str) -> None:
    storage = storage_from_string(uri)
    strategy, item = FixedWindowRateLimiter(storage), parse("2 per minute")
    assert [strategy.hit(item, "a") for _ in range(3)] == [True, True, False]
    assert storage.get(item.key_for("a")) == 3  # limits counts refused hits too
    assert storage.get_expiry(item.key_for("a")) > time.time() + 50
    storage.clear(item.key_for("a"))
    assert strategy.hit(item, "a")
    MovingWindowRateLimiter(storage).hit(item, "b")
    assert storage.reset() == 2 and storage.get(item.key_for("a")) == 0


def _hammer(uri: str, hits: int, allowed: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    strategy, item = MovingWindowRateLimiter(storage_from_string(uri)), parse("50 per minute")
    allowed.put(sum(strategy.hit(item, "shared") for _ in range(hits)))


# Processes start by "spawn": forking the test process is unsafe, since threads of other
# tests' apps (SQLite checkpoints) may hold SQLite's own mutexes at that instant, and the child
# would wait on them for ever. (gunicorn forks workers from a master that runs no such thread.)
_SPAWN = multiprocessing.get_context("spawn")


def test_processes_share_one_exact_count(uri: str) -> None:
    storage_from_string(uri).check()  # the file exists before the race
    allowed: multiprocessing.Queue = _SPAWN.Queue()  # type: ignore[type-arg]
    workers = [_SPAWN.Process(target=_hammer, args=(uri, 40, allowed)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sum(allowed.get(timeout=5) for _ in workers) == 50, "160 hits, exactly 50 allowed"


def _use_then_fork(uri: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a fresh process (no other threads): use the storage, fork, use it in the child."""
    storage = SQLiteStorage(uri)
    storage.acquire_entry("k", 10, 60)
    opened = storage._state()[0]
    fork = multiprocessing.get_context("fork")
    from_child: multiprocessing.Queue = fork.Queue()  # type: ignore[type-arg]

    def child() -> None:
        from_child.put((storage._state()[0] is not opened, storage.acquire_entry("k", 10, 60)))

    process = fork.Process(target=child)
    process.start()
    process.join(30)
    results.put((from_child.get(timeout=5), storage.get_moving_window("k", 10, 60)[1]))


def test_a_forked_process_opens_its_own_connection(uri: str) -> None:
    results: multiprocessing.Queue = _SPAWN.Queue()  # type: ignore[type-arg]
    process = _SPAWN.Process(target=_use_then_fork, args=(uri, results))
    process.start()
    process.join(60)
    assert results.get(timeout=5) == ((True, True), 2)

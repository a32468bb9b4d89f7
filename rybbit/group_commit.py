"""Group commit: concurrent requests in one process share one store round trip.

A journaled write costs about as much for one event as for a hundred, so while one thread
waits for the store, the items other threads hand in queue up, and the next call takes them
all. There is no timer and no background thread: the first thread to arrive runs the call (it
leads); when the call returns, it wakes the oldest waiting thread to lead the next one. No
request is delayed to wait for company, and each is answered only after the call holding its
own items returned (or with that call's error).

The events write uses it (Store.commit_events), and so does the sessions enricher, whose
per-visitor state would otherwise cost a round trip per event.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Entry:
    __slots__ = ("items", "wake", "lead", "finished", "error", "results")

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items
        self.wake = threading.Event()  # set once: to lead the next call, or when finished
        self.lead = False
        self.finished = False
        self.error: BaseException | None = None
        self.results: Sequence[Any] = ()


class GroupCommit(Generic[Item, Result]):
    """Funnels ``submit`` calls from many threads into few calls of ``run``.

    ``run`` takes the items of several submits, in order, and returns one result per item
    (or None when there is nothing to return); each submit gets the results of its own items.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result] | None],
        max_items: int,
        gather: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        # Called by a new leader before it takes the queue. When ``run`` blocks nothing else
        # (it runs on a gevent loop), nobody can queue up while it runs: one turn of the loop
        # first lets the requests that are ready reach the queue and share the call.
        self._gather = gather
        self._max_items = max(1, max_items)
        self._lock = threading.Lock()
        self._queue: list[_Entry] = []
        self._running = False
        # How many calls took how many items: their ratio is the grouping achieved.
        self.calls = 0
        self.items_done = 0

    def submit(self, items: Sequence[Item]) -> Sequence[Result]:
        """Return once ``items`` went through ``run``: their results, or raise its error."""
        if not items:
            return []
        entry = _Entry(items)
        with self._lock:
            self._queue.append(entry)
            entry.lead = not self._running
            self._running = True
        if not entry.lead:
            entry.wake.wait()
        if not entry.finished:  # woken (or started) as the leader
            self._lead(entry)
        if entry.error is not None:
            _reraise(entry.error)
        return entry.results

    def _lead(self, entry: _Entry) -> None:
        if self._gather is not None:
            try:
                self._gather()
            except BaseException:
                # Interrupted before taking the queue (a greenlet killed at shutdown, a
                # timeout): this submit fails with its items unshipped, and the next entry
                # leads, so no waiter stays blocked.
                self._abdicate(entry)
                raise
        with self._lock:
            group = self._take()
        items = [item for entry in group for item in entry.items]
        error: BaseException | None = None
        results: Sequence[Any] | None = None
        try:
            results = self._run(items)
        except BaseException as exc:  # each waiter gets it; none may stay blocked
            error = exc
        try:
            self._hand_out(group, results, error)
        finally:  # whatever happened above, the next leader must be woken
            with self._lock:
                self.calls += 1
                self.items_done += len(items) if error is None else 0
                self._pass_the_lead()

    def _abdicate(self, entry: _Entry) -> None:
        with self._lock:
            self._queue.remove(entry)
            self._pass_the_lead()

    def _pass_the_lead(self) -> None:
        """Wake the oldest waiting entry to lead the next call, or note that none runs.
        Called with the lock held."""
        if self._queue:
            successor = self._queue[0]
            successor.lead = True
            successor.wake.set()
        else:
            self._running = False

    @staticmethod
    def _hand_out(
        group: list[_Entry], results: Sequence[Any] | None, error: BaseException | None
    ) -> None:
        """Give each entry its slice of the results (or the error), and wake it."""
        start = 0
        for entry in group:
            end = start + len(entry.items)
            try:
                entry.error = error
                if results is not None:
                    entry.results = results[start:end]
                    if len(entry.results) != len(entry.items):
                        raise ValueError("a grouped call returned too few results")
            except Exception as exc:  # a broken result must not leave a waiter blocked
                entry.error = exc
            finally:
                start = end
                entry.finished = True
                entry.wake.set()

    def _take(self) -> list[_Entry]:
        """The oldest queued entries, up to ``max_items`` items (always at least one entry)."""
        count = total = 0
        for entry in self._queue:
            if count and total + len(entry.items) > self._max_items:
                break
            count += 1
            total += len(entry.items)
        group, self._queue = self._queue[:count], self._queue[count:]
        return group


def _reraise(error: BaseException) -> None:
    # Several threads raise for one failed call. Each raises its own copy (same type, so the
    # same error handler answers), chained to the original, so no traceback is shared.
    try:
        clone = copy.copy(error)
    except Exception:
        clone = RuntimeError(f"grouped call failed: {type(error).__name__}")
    raise clone from error

"""The enrichment step between validation and storage, and what an enricher is.

Every accepted event passes through the registered enrichers in a deterministic order before it
is stored, in two stages:

- ``"request"`` enrichers run on the request path, before the event is written durably and
  acknowledged. They see the request (headers, addresses), and the site's filters (bots,
  countries) read what they add. Pure computation belongs here (geo, device, channel...).
- ``"shipping"`` enrichers run later, on batches of already acknowledged events, just before
  they are inserted into the store (see rybbit.delivery): with the embedded store, for the
  events of concurrent requests committed together; with MongoDB, for each batch the spool's
  shipper sends. Enrichers that need store round trips for shared state (sessions) belong
  here, so that no request waits for them and a batch shares them.

An enricher that raises is logged, counted and skipped for that event; the event is still
stored. The exception is StoreUnavailable: with the store down the event could not be stored
either, so the request is answered 503 at once (at shipping time: the batch is retried).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from typing import Any

from .store_errors import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrichmentContext:
    """What an enricher may read besides the event. Enrichers must not modify it."""

    #: The site document the event belongs to (``_id``, ``domain``, ``settings``, ...).
    site: Mapping[str, Any]
    #: The peer address of the HTTP connection, after trusted proxies are accounted for.
    remote_addr: str | None
    #: The visitor's address: the body's ``ip_address`` (trusted because the request carries
    #: a valid API key), else ``remote_addr``.
    client_ip: str | None
    #: The HTTP request headers (case-insensitive).
    headers: Mapping[str, str]
    #: When the event was received (UTC); the same as the event's ``timestamp``.
    received_at: datetime
    #: The store, for enrichers that keep shared state (sessions, salts) in it.
    store: Any = None


#: Enricher stages, in the order they run (see the module docstring).
REQUEST = "request"
SHIPPING = "shipping"
STAGES = (REQUEST, SHIPPING)


class Enricher:
    """Base class for enrichers. Subclass it, set ``name``, and override :meth:`enrich`.

    ``after`` names enrichers that must run before this one (missing names are ignored).
    ``stage`` says when it runs: ``"request"`` (the default) or ``"shipping"``.
    """

    #: Unique name, e.g. ``"geo"``; used for ordering, configuration and reports.
    name: str = ""
    #: Names of enrichers whose fields this one reads.
    after: tuple[str, ...] = ()
    #: ``"request"``: before the acknowledgement, with the request at hand; ``"shipping"``:
    #: after it, on batches, just before the store insert (see the module docstring).
    stage: str = REQUEST

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        """Add or change fields of ``event`` (the document about to be stored), in place."""
        raise NotImplementedError

    def enrich_many(
        self, events: Sequence[dict[str, Any]], contexts: Sequence[EnrichmentContext]
    ) -> None:
        """Enrich the events of one batch request (``contexts[i]`` belongs to ``events[i]``),
        leaving each as :meth:`enrich` would. Override it only when the events can share work,
        such as one store round trip for all; the default is never called (the runner calls
        :meth:`enrich` per event instead, isolating failures per event). If an override
        raises, the whole batch goes on without this enricher's fields."""
        for event, context in zip(events, contexts, strict=True):
            self.enrich(event, context)

    def status(self) -> str | None:
        """None when working; otherwise a short reason it is inactive (``"no database at ..."``)."""
        return None


def order_enrichers(enrichers: list[Enricher]) -> list[Enricher]:
    """Request-stage enrichers before shipping-stage ones; within a stage dependencies first
    (``after``), ties broken by name, so the order never depends on which plugin happened to
    load first. A request-stage enricher cannot run after a shipping-stage one: such an
    ``after`` is logged and ignored."""
    by_name: dict[str, Enricher] = {}
    for enricher in enrichers:
        if enricher.name in by_name:
            log.error("two enrichers are named %r; keeping the first", enricher.name)
            continue
        if enricher.stage not in STAGES:
            log.error(
                "enricher %r has stage %r; running it at %r", enricher.name, enricher.stage, REQUEST
            )
            enricher.stage = REQUEST
        by_name[enricher.name] = enricher
    later = {name for name, e in by_name.items() if e.stage == SHIPPING}
    for enricher in by_name.values():
        if enricher.stage == REQUEST and later.intersection(enricher.after):
            log.error(
                "enricher %s runs at request time, after %s that run at shipping time: "
                "ignoring that part of its order",
                enricher.name,
                sorted(later.intersection(enricher.after)),
            )
    return [
        enricher
        for stage in STAGES
        for enricher in _order_stage({n: e for n, e in by_name.items() if e.stage == stage})
    ]


def _order_stage(by_name: dict[str, Enricher]) -> list[Enricher]:
    graph = {name: [d for d in e.after if d in by_name] for name, e in by_name.items()}
    sorter = TopologicalSorter(graph)
    try:
        sorter.prepare()
    except CycleError as exc:
        log.error("enricher dependencies form a cycle %s; running them by name", exc.args[1])
        return [by_name[name] for name in sorted(by_name)]
    order: list[Enricher] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(by_name[name] for name in ready)
        sorter.done(*ready)
    return order


class EnrichmentRunner:
    """Runs the ordered enrichers on each event, isolating and counting their failures."""

    def __init__(self, enrichers: list[Enricher]) -> None:
        self.enrichers = order_enrichers(enrichers)
        self.failures: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.events = 0
        # What take_stats reported last: totals of events, seconds and failures.
        self._taken: tuple[int, dict[str, float], dict[str, int]] = (0, {}, {})
        self._lock = threading.Lock()

    @property
    def enrichers(self) -> list[Enricher]:
        """Every enricher, in the order they run (request stage, then shipping stage)."""
        return self._all

    @enrichers.setter
    def enrichers(self, ordered: list[Enricher]) -> None:
        self._all = ordered
        self._stages = {stage: [e for e in ordered if e.stage == stage] for stage in STAGES}

    def stage(self, stage: str) -> list[Enricher]:
        """The enrichers of one stage, in order."""
        return self._stages[stage]

    def add(self, enricher: Enricher) -> None:
        """Add an enricher after start-up (embedding, tests); the order is recomputed."""
        self.enrichers = order_enrichers([*self.enrichers, enricher])

    def run(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        """The request-stage enrichers on one event."""
        timings: list[tuple[str, float]] = []
        failed: list[str] = []
        for enricher in self._stages[REQUEST]:
            started = time.perf_counter()
            try:
                enricher.enrich(event, context)
            except StoreUnavailable:
                raise  # the event's own write would fail too: answer 503 now, not after it
            except Exception:
                log.exception("enricher %s failed; event stored without it", enricher.name)
                failed.append(enricher.name)
            timings.append((enricher.name, time.perf_counter() - started))
        with self._lock:  # once per event, not once per enricher
            self.events += 1
            for name, elapsed in timings:
                self.seconds[name] += elapsed
            self.failures.update(failed)

    def run_many(
        self,
        events: Sequence[dict[str, Any]],
        contexts: Sequence[EnrichmentContext],
        stage: str = REQUEST,
    ) -> None:
        """The enrichers of ``stage`` on the events of a batch (a batch request's, or those
        shipped together), one enricher at a time, so that enrichers overriding
        ``enrich_many`` serve the whole batch in one call."""
        if not events or not self._stages[stage]:
            return
        timings: list[tuple[str, float]] = []
        failed: list[str] = []
        for enricher in self._stages[stage]:
            started = time.perf_counter()
            if type(enricher).enrich_many is Enricher.enrich_many:
                for event, context in zip(events, contexts, strict=True):
                    try:
                        enricher.enrich(event, context)
                    except StoreUnavailable:
                        raise
                    except Exception:
                        log.exception("enricher %s failed; event stored without it", enricher.name)
                        failed.append(enricher.name)
            else:
                try:
                    enricher.enrich_many(events, contexts)
                except StoreUnavailable:
                    raise
                except Exception:
                    log.exception("enricher %s failed; batch stored without it", enricher.name)
                    failed.extend([enricher.name] * len(events))
            timings.append((enricher.name, time.perf_counter() - started))
        with self._lock:
            if stage == REQUEST:  # an event counts once, when it first runs
                self.events += len(events)
            for name, elapsed in timings:
                self.seconds[name] += elapsed
            self.failures.update(failed)

    def take_stats(self) -> tuple[int, dict[str, float], dict[str, int]]:
        """Events run, seconds per enricher and failures per enricher since the last call.
        Metrics publish these once per request rather than once per enricher call."""
        if self.events == self._taken[0]:  # nothing ran: no lock needed to say so
            return 0, {}, {}
        with self._lock:
            events_then, seconds_then, failures_then = self._taken
            events = self.events - events_then
            seconds = {n: s - seconds_then.get(n, 0.0) for n, s in self.seconds.items()}
            failures = {n: f - failures_then.get(n, 0) for n, f in self.failures.items()}
            self._taken = (self.events, dict(self.seconds), dict(self.failures))
        return events, seconds, {n: f for n, f in failures.items() if f}

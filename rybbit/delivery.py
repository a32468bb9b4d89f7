"""What happens to accepted events after the request stage: a durable write, then the store.

A request's events are acknowledged once they are durable (``Delivery.accept`` returned).
Getting them into the store is *shipping*: the shipping-stage enrichers (sessions) run on a
batch, the store inserts it, and the uses of API keys are noted. One function does it for both
ways of delivering (``Shipping.ship``):

- ``DirectDelivery`` (the embedded store, and ``RYBBIT_ACK=store`` with MongoDB): the request
  waits for shipping itself. Concurrent requests share one shipment (group commit), so their
  session state and their insert cost one round trip for all.
- with MongoDB by default, events go to the spool in the instance folder first and a
  background shipper ships them in bulk (rybbit.spool).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from .enrichment import SHIPPING, EnrichmentContext, EnrichmentRunner
from .group_commit import GroupCommit
from .native import off_loop
from .storage.base import Storage
from .store_errors import raise_for_outcomes

log = logging.getLogger(__name__)

EXTENSION_KEY = "rybbit.delivery"
Doc = dict[str, Any]
_NO_HEADERS: Mapping[str, str] = {}


class Shipping:
    """Shipping-stage enrichers, the store insert and key usage, for one batch of events."""

    def __init__(
        self,
        store: Storage,
        runner: EnrichmentRunner,
        site_of: Callable[[str], Mapping[str, Any] | None],
        key_used: Callable[[str, Any], None],
    ) -> None:
        self.store = store
        self.runner = runner
        self.site_of = site_of
        self.key_used = key_used

    def ship(self, events: list[Doc]) -> list[Exception | None]:
        """Store ``events``; per event, None or the error that kept it out (see
        Storage.insert_events). Raises when the whole write failed."""
        if self.runner.stage(SHIPPING):
            self.runner.run_many(events, [self._context(e) for e in events], SHIPPING)
        outcomes = self.store.insert_events(events) or [None] * len(events)
        used: dict[str, Any] = {}
        for event, outcome in zip(events, outcomes, strict=True):
            key_id = event.get("api_key_id")
            if outcome is None and key_id:
                used[key_id] = event["received_at"]
        for key_id, moment in used.items():
            self.key_used(key_id, moment)
        return outcomes

    def _context(self, event: Doc) -> EnrichmentContext:
        """What a shipping-stage enricher may read: the site, the time, the store. The
        request is gone (no headers, no addresses): what an enricher needs of it, a
        request-stage enricher must put on the event."""
        site_id = event["site_id"]
        return EnrichmentContext(
            site=self.site_of(site_id) or {"_id": site_id},
            remote_addr=None,
            client_ip=None,
            headers=_NO_HEADERS,
            received_at=event["received_at"],
            store=self.store,
        )


class DirectDelivery:
    """Acknowledge once shipped: the request's events are stored before ``accept`` returns."""

    def __init__(self, shipping: Shipping, max_events: int) -> None:
        self.shipping = shipping
        ship = shipping.ship
        if shipping.store.embedded:
            # Under gevent, SQLite would block the worker; in the hub's thread pool it lets
            # other requests run meanwhile and queue up for the next group (rybbit.native).
            ship = off_loop(ship)
        self.group: GroupCommit[Doc, Exception | None] = GroupCommit(ship, max_events)

    def accept(self, events: list[Doc]) -> None:
        """Returns once ``events`` are stored; raises as raise_for_outcomes says."""
        raise_for_outcomes(self.group.submit(events))

    def close(self) -> None:
        """Nothing is pending once every accept returned."""


class _Holder:
    """One delivery per process (it holds locks and, with a spool, a thread and files)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._delivery: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> Any:
        pid = os.getpid()
        if self._delivery is not None and self._pid == pid:
            return self._delivery
        with self._lock:
            if self._delivery is None or self._pid != pid:
                self._delivery, self._pid = self._make(), pid
        return self._delivery

    def close(self) -> None:
        with self._lock:
            if self._delivery is not None and self._pid == os.getpid():
                self._delivery.close()
            self._delivery = None


def get_delivery(app: Flask) -> DirectDelivery:
    return app.extensions[EXTENSION_KEY].get()  # type: ignore[no-any-return]


def init_app(app: Flask, make_shipping: Callable[[], Shipping]) -> None:
    """Register this app's delivery, made on first use in each process."""

    def make() -> DirectDelivery:
        return DirectDelivery(make_shipping(), int(app.config["GROUP_COMMIT_MAX_EVENTS"]))

    app.extensions[EXTENSION_KEY] = _Holder(make)

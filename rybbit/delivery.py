"""What happens to accepted events after the request stage: a durable write, then the store.

A request's events are acknowledged once they are durable (``Delivery.accept`` returned).
Getting them into the store is *shipping*: the shipping-stage enrichers (sessions) run on a
batch, the store inserts it, and the uses of API keys are noted. One function does it for both
ways of delivering (``Shipping.ship``):

- ``DirectDelivery`` (the embedded store, and ``RYBBIT_ACK=store`` with MongoDB): the request
  waits for shipping itself. Concurrent requests share one shipment (group commit), so their
  session state and their insert cost one round trip for all.
- ``SpooledDelivery`` (MongoDB, by default): events are acknowledged once they are in this
  process's spool in the instance folder (appended and fdatasync'd, concurrent requests
  sharing one sync), and a background shipper ships them in bulk (rybbit.spool,
  docs/spool.md). While MongoDB is down, events keep being accepted up to the spool's quota;
  past it, 503 with Retry-After.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from bson import ObjectId
from flask import Flask

from . import metrics
from .enrichment import SHIPPING, EnrichmentContext, EnrichmentRunner
from .group_commit import GroupCommit
from .native import gevent_active, let_others_run, off_loop
from .spool import SHIPPED, Outcome, Refused, Retry, Shipper, Spool, SpoolError, SpoolFull
from .storage import codec
from .storage.base import Storage
from .store_errors import StoreUnavailable, raise_for_outcomes

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
        Storage.insert_events). Raises when the whole write failed. Events of a site deleted
        since they were acknowledged are dropped (None): its events are being purged."""
        sites = {site_id: self.site_of(site_id) for site_id in {e["site_id"] for e in events}}
        kept = [i for i, event in enumerate(events) if sites[event["site_id"]] is not None]
        batch = [events[i] for i in kept]
        if batch and self.runner.stage(SHIPPING):
            contexts = [self._context(event, sites[event["site_id"]]) for event in batch]
            self.runner.run_many(batch, contexts, SHIPPING)
        stored = (self.store.insert_events(batch) if batch else None) or [None] * len(batch)
        outcomes: list[Exception | None] = [None] * len(events)
        used: dict[str, Any] = {}
        for i, outcome in zip(kept, stored, strict=True):
            outcomes[i] = outcome
            key_id = events[i].get("api_key_id")
            if outcome is None and key_id:
                used[key_id] = events[i]["received_at"]
        for key_id, moment in used.items():
            self.key_used(key_id, moment)
        return outcomes

    def _context(self, event: Doc, site: Mapping[str, Any] | None) -> EnrichmentContext:
        """What a shipping-stage enricher may read: the site, the time, the store. The
        request is gone (no headers, no addresses): what an enricher needs of it, a
        request-stage enricher must put on the event."""
        return EnrichmentContext(
            site=site or {"_id": event["site_id"]},
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
        gather = None
        if shipping.store.embedded and gevent_active():
            if shipping.store.syncs_each_commit:
                # An fsync (0.2 ms to several ms) would stop the worker: in the hub's thread
                # pool it lets other requests run meanwhile and queue up for the next group.
                ship = off_loop(ship)
            else:
                # A commit that does not wait for the disk is Python and SQLite work on the
                # worker's CPU wherever it runs; on the loop it costs no hand-over to a thread
                # and no GIL ping-pong with it (bench/throughput.py: ~10-20% more requests/s,
                # p99 at half load 114 -> 34 ms). One turn of the loop before each shipment
                # lets the ready requests join it. The price: while another process holds
                # the file's write lock (its own commit, about a millisecond; a retention
                # chunk, longer), this worker's loop waits with SQLite's busy handler, up to
                # EMBEDDED_BUSY_TIMEOUT_MS, where only the committing requests used to wait.
                gather = let_others_run
        self.group: GroupCommit[Doc, Exception | None] = GroupCommit(ship, max_events, gather)

    def accept(self, events: list[Doc]) -> None:
        """Returns once ``events`` are stored; raises as raise_for_outcomes says."""
        raise_for_outcomes(self.group.submit(events))

    def close(self) -> None:
        """Nothing is pending once every accept returned."""


class SpooledDelivery:
    """Acknowledge once spooled; ship in the background (see the module docstring)."""

    def __init__(
        self, shipping: Shipping, root: str, quota_bytes: int, linger_seconds: float
    ) -> None:
        self.shipping = shipping
        self.spool = Spool(root, quota_bytes)
        self._reported = (0, 0, 0)  # shipped, refused, errors: what metrics have been told
        self.shipper = Shipper(
            root, self.spool, self._deliver, linger=linger_seconds, on_progress=self._report
        )
        self.shipper.start()

    def accept(self, events: list[Doc]) -> None:
        """Returns once ``events`` are durable in the spool; StoreUnavailable when the spool
        is over its quota (MongoDB down for long) or cannot be written."""
        for event in events:
            # Given now, so that a shipment delivered twice (a crash before its checkpoint)
            # stores each event once: the second insert of an _id is a duplicate, skipped.
            if "_id" not in event:
                event["_id"] = ObjectId()
        records = [codec.dumps(event).encode() for event in events]
        try:
            self.spool.append(records)
        except SpoolFull as exc:
            log.warning("%s: refusing events until shipping catches up", exc)
            raise StoreUnavailable("spool full") from exc
        except SpoolError as exc:
            log.error("spool: cannot write (%s)", exc)
            raise StoreUnavailable("spool unavailable") from exc

    def _deliver(self, payloads: list[bytes]) -> list[Outcome]:
        """One shipment, for the shipper: an outcome per record."""
        outcomes: list[Outcome | None] = [None] * len(payloads)
        events: list[Doc] = []
        positions: list[int] = []
        for position, payload in enumerate(payloads):
            try:
                events.append(codec.loads(payload))
                positions.append(position)
            except ValueError as exc:  # checksummed yet unreadable: never will be
                outcomes[position] = Refused(f"unreadable record: {exc}")
        try:
            shipped = self.shipping.ship(events) if events else []
        except StoreUnavailable as exc:
            shipped = [exc] * len(events)
        for position, error in zip(positions, shipped, strict=True):
            if error is None:
                outcomes[position] = SHIPPED
            elif isinstance(error, StoreUnavailable):
                outcomes[position] = Retry(str(error) or "store unavailable")
            else:
                outcomes[position] = Refused(str(error))
        return [outcome if outcome is not None else SHIPPED for outcome in outcomes]

    def _report(self) -> None:
        """Hand metrics what the shipper did since the last call, and the backlog (called by
        the shipping thread after each attempt, once its counters include it)."""
        stats = self.shipper.stats()
        shipped, refused, errors = self._reported
        metrics.spool_shipped(
            stats.shipped_total - shipped,
            stats.refused_total - refused,
            stats.ship_errors_total - errors,
        )
        self._reported = (stats.shipped_total, stats.refused_total, stats.ship_errors_total)
        metrics.spool_backlog(stats.backlog_events, stats.backlog_bytes, stats.oldest_age_seconds)

    def stats(self) -> dict[str, Any]:
        """The backlog and shipping counters of this process (for /readyz)."""
        return self.shipper.stats().as_dict()

    def flush(self, timeout: float) -> bool:
        """Wait until what was acknowledged before this call is shipped; False on timeout."""
        return self.shipper.flush(timeout)

    def close(self) -> None:
        """Ship what can be shipped in a few seconds; the rest waits in the spool for the next
        process that adopts it."""
        self.shipper.stop(timeout=5.0)
        self.spool.close()


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

    def existing(self) -> Any:
        """This process's delivery if it was made, else None (made by nothing here)."""
        return self._delivery if self._pid == os.getpid() else None

    def close(self) -> None:
        with self._lock:
            if self._delivery is not None and self._pid == os.getpid():
                self._delivery.close()
            self._delivery = None


def get_delivery(app: Flask) -> DirectDelivery | SpooledDelivery:
    return app.extensions[EXTENSION_KEY].get()  # type: ignore[no-any-return]


def spooled(app: Flask) -> bool:
    """Events are acknowledged at the spool: MongoDB, and ACK is not "store"."""
    return bool(app.config["MONGO_URI"]) and str(app.config["ACK"]).lower() != "store"


def spool_root(app: Flask) -> str:
    path = str(app.config["SPOOL_DIR"])
    return path if os.path.isabs(path) else os.path.join(app.instance_path, path)


def init_app(app: Flask, make_shipping: Callable[[], Shipping]) -> None:
    """Register this app's delivery, made on first use in each process."""
    ack = str(app.config["ACK"]).lower()
    if ack not in ("spool", "store"):
        raise ValueError(f'ACK must be "spool" or "store", not {ack!r}')

    def make() -> DirectDelivery | SpooledDelivery:
        if spooled(app):
            return SpooledDelivery(
                make_shipping(),
                spool_root(app),
                int(app.config["SPOOL_QUOTA_BYTES"]),
                int(app.config["SPOOL_LINGER_MS"]) / 1000,
            )
        return DirectDelivery(make_shipping(), int(app.config["GROUP_COMMIT_MAX_EVENTS"]))

    app.extensions[EXTENSION_KEY] = _Holder(make)
    log.info(
        "events acknowledged %s",
        f"once in the spool at {spool_root(app)}, then shipped to MongoDB"
        if spooled(app)
        else "once the store has them",
    )


def settle(app: Flask, timeout: float = 5.0) -> None:
    """Before a read of events: wait (up to ``timeout``) until what this process acknowledged
    is in the store, so that a client reads its own writes through the same worker."""
    if spooled(app):
        current = app.extensions[EXTENSION_KEY].existing()
        if current is not None:  # this process acknowledged something
            current.flush(timeout)


def close(app: Flask) -> None:
    """Stop shipping in this process (gunicorn's worker_exit, tests)."""
    holder = app.extensions.get(EXTENSION_KEY)
    if holder is not None:
        holder.close()

"""sessions: a ``session_id`` per visitor that ends after 30 minutes of inactivity.

Session state is a small document per visitor in the store (collection ``sessions``), so all
workers and machines agree. A visitor is the event's ``user_id`` (the client's, or the
anonymous one from the identity enricher). Starting a session is race-free: the document's
``_id`` is the visitor, so two workers seeing a new visitor at once create one session.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl
from rybbit.store import DuplicateKey


class SessionsEnricher(Enricher):
    name = "sessions"
    after = ("identity", "bots")

    def __init__(self, timeout: timedelta) -> None:
        self.timeout = timeout
        self._next_cleanup: datetime | None = None

    def _clean_up(self, store: Any, now: datetime) -> None:
        """Delete ended sessions, at most once per timeout period per process. An ended
        session is never continued, and a small collection matters: not every server has TTL
        indexes, and the embedded store scans the collection on every read."""
        if self._next_cleanup is not None and now < self._next_cleanup:
            return
        self._next_cleanup = now + self.timeout
        with store.op():
            store.state("sessions").delete_many({"last_seen": {"$lt": now - self.timeout}})

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        visitor = event.get("user_id")
        store = context.store
        if not visitor or store is None or event.get("is_bot"):
            return  # bots get no sessions
        key = f"{event['site_id']}:{visitor}"
        now = context.received_at
        self._clean_up(store, now)
        sessions = store.state("sessions")
        with store.op():
            live = sessions.find_one_and_update(
                {"_id": key, "last_seen": {"$gte": now - self.timeout}},
                {"$max": {"last_seen": now}},
                return_document=ReturnDocument.AFTER,
            )
        if live is None:
            live = self._start(store, key, now)
        event["session_id"] = live["session_id"]

    def _start(self, store: Any, key: str, now: Any) -> dict[str, Any]:
        fresh = {"session_id": uuid.uuid4().hex, "started_at": now, "last_seen": now}
        try:
            with store.op():
                # Matches only an expired session; with none, the upsert inserts the visitor.
                store.state("sessions").update_one(
                    {"_id": key, "last_seen": {"$lt": now - self.timeout}},
                    {"$set": fresh},
                    upsert=True,
                )
            return fresh
        except DuplicateKey:  # another worker started or renewed it a moment ago
            with store.op():
                return store.state("sessions").find_one({"_id": key}) or fresh


@hookimpl
def register_enrichers(register: Any, app: Any) -> None:
    register(SessionsEnricher(timedelta(seconds=int(app.config["SESSION_TIMEOUT_SECONDS"]))))

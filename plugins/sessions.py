"""sessions: a ``session_id`` per visitor that ends after 30 minutes of inactivity.

Session state is a small document per visitor in the store (collection ``sessions``), so all
workers and machines agree. A visitor is the event's ``user_id`` (the client's, or the
anonymous one from the identity enricher).

Events are resolved in groups: the events of a batch request, and those of concurrent
requests in one process (see rybbit.group_commit), share one read and one write, so the
store round trips per event fall as the load rises. The write is conditional, so two workers
that see a new or returning visitor at once still agree on one session: the loser of the race
reads back the winner's session id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from rybbit.group_commit import GroupCommit
from rybbit.plugin import Enricher, EnrichmentContext, hookimpl
from rybbit.store import DuplicateKey

# (visitor key, time of the event)
Visit = tuple[str, datetime]
# (filter, update) of one update_one
Update = tuple[dict[str, Any], dict[str, Any]]


class SessionsEnricher(Enricher):
    name = "sessions"
    after = ("identity", "bots")

    def __init__(self, timeout: timedelta) -> None:
        self.timeout = timeout
        self._next_cleanup: datetime | None = None
        self._groups: dict[int, GroupCommit[Visit, str]] = {}
        self._groups_lock = threading.Lock()

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        self.enrich_many([event], [context])

    def enrich_many(
        self, events: Sequence[dict[str, Any]], contexts: Sequence[EnrichmentContext]
    ) -> None:
        todo: list[tuple[dict[str, Any], Visit]] = []
        store = None
        for event, context in zip(events, contexts, strict=True):
            visitor = event.get("user_id")
            if not visitor or context.store is None or event.get("is_bot"):
                continue  # bots get no sessions
            store = context.store
            todo.append((event, (f"{event['site_id']}:{visitor}", context.received_at)))
        if store is None:
            return
        self._clean_up(store, max(visit[1] for _, visit in todo))
        session_ids = self._group(store).submit([visit for _, visit in todo])
        for (event, _), session_id in zip(todo, session_ids, strict=True):
            event["session_id"] = session_id

    def _group(self, store: Any) -> GroupCommit[Visit, str]:
        with self._groups_lock:
            group = self._groups.get(id(store))
            if group is None:
                group = GroupCommit(lambda visits: self._resolve(store, visits), 5000)
                self._groups[id(store)] = group
            return group

    def _clean_up(self, store: Any, now: datetime) -> None:
        """Delete ended sessions, at most once per timeout period per process. An ended
        session is never continued, and a small collection matters: not every server has TTL
        indexes, and the embedded store scans the collection on every read."""
        if self._next_cleanup is not None and now < self._next_cleanup:
            return
        self._next_cleanup = now + self.timeout
        with store.op():
            store.state("sessions").delete_many({"last_seen": {"$lt": now - self.timeout}})

    def _resolve(self, store: Any, visits: list[Visit]) -> list[str]:
        """The session id of each visit, with one read and one write for all of them."""
        first: dict[str, datetime] = {}
        last: dict[str, datetime] = {}
        for key, at in visits:
            first[key] = min(at, first.get(key, at))
            last[key] = max(at, last.get(key, at))
        sessions = store.state("sessions")
        known = store.find_by_ids(sessions, list(first))

        chosen: dict[str, str] = {}
        inserts: list[dict[str, Any]] = []  # new visitors
        updates: list[Update] = []  # sessions that go on, and ended ones replaced
        contested: set[str] = set()  # keys another worker may have changed since the read
        for key, started in first.items():
            doc = known.get(key)
            if doc is not None and doc["last_seen"] >= started - self.timeout:
                chosen[key] = doc["session_id"]  # the session goes on
                updates.append(({"_id": key}, {"$max": {"last_seen": last[key]}}))
                continue
            chosen[key] = uuid.uuid4().hex
            contested.add(key)
            fresh = {"session_id": chosen[key], "started_at": started, "last_seen": last[key]}
            if doc is None:  # a new visitor: insert, unless someone else just did
                inserts.append({"_id": key, **fresh})
            else:  # the last session ended: replace it, unless someone else just did
                updates.append(({"_id": key, "session_id": doc["session_id"]}, {"$set": fresh}))

        if self._write(store, sessions, inserts, updates):
            contested.clear()  # every conditional write took effect: our ids stand
        if contested:
            for key, doc in store.find_by_ids(sessions, sorted(contested)).items():
                chosen[key] = doc["session_id"]
        return [chosen[key] for key, _ in visits]

    @staticmethod
    def _write(
        store: Any, sessions: Any, inserts: list[dict[str, Any]], updates: list[Update]
    ) -> bool:
        """Apply the writes; True when each took effect as planned (every insert inserted,
        every update matched). False means another worker got in between."""
        if not store.embedded:  # montydb has neither bulk_write nor a full insert_many
            try:
                with store.op():
                    if inserts:
                        sessions.insert_many(inserts, ordered=False)
                    if updates:
                        result = sessions.bulk_write(
                            [UpdateOne(query, update) for query, update in updates],
                            ordered=False,
                        )
                        return bool(result.matched_count == len(updates))
                return True
            except DuplicateKey:
                # A concurrent insert of the same visitor won; the updates still need doing.
                # Redo all one by one: each write is idempotent and reports its own outcome.
                pass
        planned = 0
        for doc in inserts:
            try:
                with store.op():
                    sessions.insert_one(doc)
                planned += 1
            except DuplicateKey:
                continue
        for query, update in updates:
            with store.op():
                planned += 1 if sessions.update_one(query, update).matched_count else 0
        return planned == len(inserts) + len(updates)


@hookimpl
def register_enrichers(register: Any, app: Any) -> None:
    register(SessionsEnricher(timedelta(seconds=int(app.config["SESSION_TIMEOUT_SECONDS"]))))

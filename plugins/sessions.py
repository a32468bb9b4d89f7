"""sessions: a ``session_id`` per visitor that ends after 30 minutes of inactivity.

Session state is shared by all workers and machines: in Redis when configured (one script
call per shipment, rybbit.session_state), else a small document per visitor in the store
(collection ``sessions``), as described below. A visitor is the event's ``user_id`` (the
client's, or the anonymous one from the identity enricher).

Events are resolved in groups: the events of a batch request, and those of concurrent
requests in one process (see rybbit.group_commit), share their store round trips. New visitors
cost one insert for the whole group; visitors this process saw recently cost no read, and
their ``last_seen`` is written only once the stored one falls a tenth of the timeout (at most
a minute) behind; other returning visitors cost a read and a write more. Writes are
conditional or inserts of a visitor's ``_id``, so two workers that see a new or returning
visitor at once still agree on one session: the loser of the race reads back the winner's id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cachetools import TTLCache

from rybbit.group_commit import GroupCommit
from rybbit.plugin import Enricher, EnrichmentContext, hookimpl
from rybbit.session_state import RedisSessions, redis_state
from rybbit.storage.base import SessionExtend, SessionReplace

# (visitor key, time of the event)
Visit = tuple[str, datetime]


class SessionsEnricher(Enricher):
    name = "sessions"
    # At shipping time, on batches: its store round trips never hold up a request, and the
    # events shipped together share them. It reads what request-stage enrichers added
    # (identity's user_id, bots' is_bot), which all ran before.
    stage = "shipping"

    def __init__(self, timeout: timedelta, redis: RedisSessions | None = None) -> None:
        self.timeout = timeout
        self.redis = redis  # None: state in the store
        self._next_cleanup: datetime | None = None
        self._groups: dict[int, GroupCommit[Visit, str]] = {}
        self._groups_lock = threading.Lock()
        # Visitors this process has seen within the timeout:
        #   key -> (session id, last seen, last_seen as the store has it).
        # A session whose stored last_seen is less than the timeout old cannot have been
        # ended or replaced by any worker, so these need no read. Nor a write each time:
        # last_seen is written when the stored one is write_interval behind, so the store's
        # view of a session may end up to write_interval early.
        self._recent: TTLCache[str, tuple[str, datetime, datetime]] = TTLCache(
            maxsize=200_000, ttl=timeout.total_seconds()
        )
        self.write_interval = min(timedelta(seconds=60), timeout / 10)
        self._recent_lock = threading.Lock()

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
        if self.redis is None:  # Redis forgets ended sessions by itself
            self._clean_up(store, max(visit[1] for _, visit in todo))
        session_ids = self._group(store).submit([visit for _, visit in todo])
        for (event, _), session_id in zip(todo, session_ids, strict=True):
            event["session_id"] = session_id

    def _group(self, store: Any) -> GroupCommit[Visit, str]:
        with self._groups_lock:
            group = self._groups.get(id(store))
            if group is None:
                redis = self.redis
                if redis is None:
                    group = GroupCommit(lambda visits: self._resolve(store, visits), 5000)
                else:
                    group = GroupCommit(lambda visits: _resolve_in(redis, visits), 5000)
                self._groups[id(store)] = group
            return group

    def _clean_up(self, store: Any, now: datetime) -> None:
        """Delete ended sessions, at most once per timeout period per process. An ended
        session is never continued, and a small collection matters: not every server has TTL
        indexes, and the embedded store scans the collection on every read."""
        if self._next_cleanup is not None and now < self._next_cleanup:
            return
        self._next_cleanup = now + self.timeout
        store.delete_sessions_before(now - self.timeout)

    def _resolve(self, store: Any, visits: list[Visit]) -> list[str]:
        """The session id of each visit, in as few round trips as the visitors allow:
        - seen by this process within the timeout: the session goes on, no read; last_seen
          is written (for all of them in one write) once the stored one is write_interval
          behind, so another worker may see a session end up to write_interval early;
        - otherwise each gets a new session, inserted unless the visitor has a record (one
          write for all); those who have are read, and their sessions extended or, if ended,
          replaced (one read and one write more, shared with the first kind's write).
        """
        first, last = _bounds(visits)
        chosen: dict[str, str] = {}
        stored: dict[str, datetime] = {}  # last_seen in the store once this group is done
        extend: dict[str, datetime] = {}  # keys whose stored last_seen to raise, and to what
        with self._recent_lock:
            for key in first:
                hint = self._recent.get(key)
                # Judged by the stored last_seen, as every other worker judges it.
                if hint is not None and hint[2] >= first[key] - self.timeout:
                    chosen[key], stored[key] = hint[0], hint[2]
        unknown = [key for key in first if key not in chosen]
        for key in unknown:
            chosen[key] = uuid.uuid4().hex
        inserted = store.insert_sessions(
            [self._record(key, chosen[key], first, last) for key in unknown]
        )
        stored.update((key, last[key]) for key in inserted)
        returning = [key for key in unknown if key not in inserted]
        known = store.find_sessions(returning) if returning else {}
        replace: list[SessionReplace] = []
        for key in returning:
            doc = known.get(key)
            if doc is None:
                continue  # deleted as ended a moment ago: inserted again below
            if doc["last_seen"] >= first[key] - self.timeout:  # the session goes on
                chosen[key], stored[key] = doc["session_id"], doc["last_seen"]
            else:  # it ended: replace it, unless another worker replaced or extended it
                fresh = self._record(key, chosen[key], first, last)
                del fresh["_id"]
                ended_before = first[key] - self.timeout
                replace.append(SessionReplace(key, doc["session_id"], ended_before, fresh))
                stored[key] = last[key]
        for key, seen in stored.items():
            if last[key] - seen >= self.write_interval:
                extend[key] = last[key]
                stored[key] = last[key]
        # Each write names the session it extends: one another worker replaced meanwhile
        # does not match, and the re-read below gives this process the new id.
        updates: list[SessionReplace | SessionExtend] = [*replace]
        updates += [SessionExtend(key, chosen[key], at) for key, at in extend.items()]
        lost = [key for key in returning if key not in known]  # deleted as ended meanwhile
        if not store.update_sessions(updates):
            # Another worker got in between, or a session was deleted as ended: what the store
            # holds now is the answer.
            mine = [key for key in first if key in extend or key in returning]
            found = store.find_sessions(mine)
            for key, doc in found.items():
                chosen[key], stored[key] = doc["session_id"], doc["last_seen"]
            lost = [key for key in mine if key not in found]
        if lost:  # a visitor without a record gets ours again, unless another worker's won
            records = [self._record(key, chosen[key], first, last) for key in lost]
            refused = set(lost) - store.insert_sessions(records)
            for key, doc in store.find_sessions(sorted(refused)).items():
                chosen[key], stored[key] = doc["session_id"], doc["last_seen"]
        with self._recent_lock:
            for key in first:
                self._recent[key] = (chosen[key], last[key], stored.get(key, last[key]))
        return [chosen[key] for key, _ in visits]

    @staticmethod
    def _record(
        key: str, session_id: str, first: dict[str, datetime], last: dict[str, datetime]
    ) -> dict[str, Any]:
        """A visitor's document for a session that starts with this group's events."""
        return {
            "_id": key,
            "session_id": session_id,
            "started_at": first[key],
            "last_seen": last[key],
        }


def _resolve_in(redis: RedisSessions, visits: list[Visit]) -> list[str]:
    """The session id of each visit, from Redis in one round trip. No local cache as in the
    store's path: the round trip is needed anyway to raise last_seen, so every worker judges
    a session by its exact last event."""
    chosen = redis.resolve(*_bounds(visits))
    return [chosen[key] for key, _ in visits]


def _bounds(visits: list[Visit]) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """Each visitor's first and last event among ``visits``."""
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for key, at in visits:
        first[key] = min(at, first.get(key, at))
        last[key] = max(at, last.get(key, at))
    return first, last


@hookimpl
def register_enrichers(register: Any, app: Any) -> None:
    timeout = timedelta(seconds=int(app.config["SESSION_TIMEOUT_SECONDS"]))
    register(SessionsEnricher(timeout, redis_state(app, timeout)))

"""The storage interface: the operations the service needs, whatever the back end.

Two back ends implement it: ``mongo.MongoStorage`` (any MongoDB-wire server, through pymongo)
and ``sqlite.SQLiteStorage`` (the embedded default, through the standard library's sqlite3).
Callers use these methods only; what a back end does underneath (collections and write
concerns, tables and transactions) stays inside its module. Every method raises
``StoreUnavailable`` when the store cannot answer in time, and ``DuplicateKey`` where a unique
key is taken.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..group_commit import GroupCommit
from ..store_errors import raise_for_outcomes
from .retention import Retention

Doc = dict[str, Any]


@dataclass(frozen=True)
class EventQuery:
    """Which events, in which order: a site's (or, with ``site_id`` None, every site's) events
    in ``[start, end)``, of one type, ordered by (timestamp, _id), after a keyset position."""

    site_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    event_type: str | None = None
    newest_first: bool = True
    # (timestamp, _id) of the last event of the previous page.
    after: tuple[datetime, Any] | None = None


@dataclass(frozen=True)
class SessionReplace:
    """Give visitor ``key`` a new session, if its stored one is still ``session_id`` and ended
    (last seen before ``ended_before``)."""

    key: str
    session_id: str
    ended_before: datetime
    new: Doc  # session_id, started_at, last_seen


@dataclass(frozen=True)
class SessionExtend:
    """Raise visitor ``key``'s last_seen to ``last_seen``, if its session is ``session_id``."""

    key: str
    session_id: str
    last_seen: datetime


class Storage(ABC):
    """One process's store. Safe for use by many threads at once."""

    #: True for the embedded store (no server: no time-series collections, no TTL indexes).
    embedded: bool
    #: True when a write of events waits for the disk (an fsync): callers on an event loop
    #: should not make it there. A server's round trip waits on a socket, which yields.
    syncs_each_commit: bool = False

    def __init__(self, *, group_commit_max_events: int = 5000) -> None:
        self.group_commit: GroupCommit[Doc, Exception | None] = GroupCommit(
            self.insert_events, group_commit_max_events
        )
        # The events' kind and expiry (retention.py); configured by the store holder.
        self.retention = Retention()

    @contextlib.contextmanager
    def op(self) -> Iterator[None]:
        """Errors of code that reaches past the interface, translated (a no-op by default)."""
        yield

    # -- lifecycle ---------------------------------------------------------------------------

    @abstractmethod
    def ensure_indexes(self) -> None:
        """Create what the read paths need (tables, indexes) and apply the retention."""

    @abstractmethod
    def ping(self) -> None:
        """Return if the store answers; raise StoreUnavailable otherwise."""

    def close(self) -> None:  # noqa: B027 (optional: a back end may hold nothing to release)
        """Release connections (tests, shutdown)."""

    # -- events ------------------------------------------------------------------------------

    def commit_events(self, events: list[Doc]) -> None:
        """Store events for a request, sharing one write with concurrent requests (see
        group_commit); returns once they are acknowledged, raises as insert_events does.
        When some of them were not stored but others were, EventsRefused names them (by
        position in ``events``): refused for what they hold, or to be retried (a transient
        per-document error). StoreUnavailable only when none of them was stored, so that a
        request answered 503 has stored nothing."""
        raise_for_outcomes(self.group_commit.submit(events))

    @abstractmethod
    def insert_events(self, events: list[Doc]) -> list[Exception | None] | None:
        """Store events in one write; one whose ``_id`` exists (a repeated ``event_id``) is
        skipped as already stored. Events without ``_id`` get one (set in the document, as
        pymongo does). A failure of the whole write raises, and the caller must not
        acknowledge. Where the store refuses single documents, the others are stored and the
        result has, per event, None or the error for its sender (see write_errors)."""

    @abstractmethod
    def find_events(self, query: EventQuery, limit: int) -> list[Doc]:
        """One page of events (keyset pagination on the (site, timestamp, _id) index)."""

    @abstractmethod
    def iter_events(self, query: EventQuery) -> Iterator[Doc]:
        """Every matching event, streamed from one cursor (exports)."""

    def iter_event_lines(self, query: EventQuery, to_json: Callable[[Doc], str]) -> Iterator[str]:
        """``to_json`` of every matching event (NDJSON exports); a back end may produce the
        same lines more cheaply from what it stores."""
        for event in self.iter_events(query):
            yield to_json(event)

    @abstractmethod
    def count_events(self, site_id: str | None = None) -> int: ...

    @abstractmethod
    def delete_site_events(self, site_id: str) -> int:
        """Delete every event of a site; how many."""

    @abstractmethod
    def delete_events_before(self, cutoff: datetime) -> int:
        """Delete events whose timestamp is before ``cutoff`` (retention); how many."""

    # -- sites -------------------------------------------------------------------------------

    @abstractmethod
    def last_site_seq(self) -> int:
        """The highest site number ever handed out (deleted sites included), 0 if none."""

    @abstractmethod
    def insert_site(self, doc: Doc) -> None:
        """Insert a site; DuplicateKey when its ``_id`` is taken."""

    @abstractmethod
    def find_site(self, site_id: str) -> Doc | None:
        """The live (not deleted) site with this id."""

    @abstractmethod
    def list_sites(self) -> list[Doc]:
        """Live sites in the order of their numbers."""

    @abstractmethod
    def find_deleted_site(self, site_id: str) -> Doc | None:
        """The site with this id if it was deleted (its tombstone)."""

    @abstractmethod
    def list_deleted_sites(self) -> list[Doc]:
        """Deleted sites in the order of their numbers."""

    @abstractmethod
    def update_site(self, site_id: str, fields: Doc) -> bool:
        """Set fields (dotted names reach into sub-documents) of a live site; False if none."""

    # -- API keys ----------------------------------------------------------------------------

    @abstractmethod
    def insert_key(self, doc: Doc) -> None: ...

    @abstractmethod
    def find_key(self, key_id: str, site_id: str | None = None) -> Doc | None: ...

    @abstractmethod
    def find_key_by_hash(self, key_hash: str) -> Doc | None: ...

    @abstractmethod
    def list_keys(self, site_id: str) -> list[Doc]:
        """A site's keys, oldest first."""

    @abstractmethod
    def update_key(
        self, key_id: str, fields: Doc, *, site_id: str | None = None, live: bool = False
    ) -> bool:
        """Set fields of a key (of ``site_id``; not revoked if ``live``); False if none."""

    @abstractmethod
    def revoke_site_keys(self, site_id: str, at: datetime) -> int:
        """Revoke every live key of a site at ``at``; how many."""

    @abstractmethod
    def record_key_uses(self, uses: dict[str, datetime]) -> None:
        """Raise each key's ``last_used_at`` to the given time (never lower it)."""

    # -- identity salts ----------------------------------------------------------------------

    @abstractmethod
    def salt_for_day(self, candidate: Doc) -> Doc:
        """The stored salt of the candidate's day (``_id``): the candidate, inserted, unless
        another process stored one first."""

    @abstractmethod
    def delete_salts_before(self, day: str) -> int:
        """Delete the salts of days (``_id``, ``YYYY-MM-DD``) before ``day``; how many."""

    @abstractmethod
    def list_salts(self) -> list[Doc]: ...

    # -- other state documents (identified visitors, plugins' shared state) ---------------

    @abstractmethod
    def find_document(self, collection: str, doc_id: str) -> Doc | None:
        """The state document with this ``_id`` in ``collection``, or None."""

    @abstractmethod
    def put_document(self, collection: str, doc: Doc) -> None:
        """Insert or replace, whole, the state document ``doc["_id"]`` of ``collection``
        (acknowledged, not journaled on MongoDB: rebuildable state)."""

    # -- visitor sessions --------------------------------------------------------------------

    @abstractmethod
    def find_sessions(self, keys: list[str]) -> dict[str, Doc]:
        """The stored sessions of these visitors, by visitor key."""

    @abstractmethod
    def insert_sessions(self, docs: list[Doc]) -> set[str]:
        """Insert each session whose visitor (``_id``) has none, in one write; which did."""

    @abstractmethod
    def update_sessions(self, changes: list[SessionReplace | SessionExtend]) -> bool:
        """Apply the conditional changes in one write; True when every one matched."""

    @abstractmethod
    def delete_sessions_before(self, before: datetime) -> int:
        """Delete sessions last seen before ``before`` (ended); how many."""

    @abstractmethod
    def list_sessions(self) -> list[Doc]: ...

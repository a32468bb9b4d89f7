"""A plan evaluated in Python over the period's events: the MongoDB back end's fallback for
servers whose aggregation lacks what the pipeline needs (FerretDB 1.x, see mongo_query).

Same definitions as the SQL of sqlite_query, row for row: a session's first event is its
earliest (ties: the first stored), its entry and exit pages its first and last pageview's
path, it bounced when it has one pageview and no interaction (events other than pageviews and
performance reports), its duration runs from its first to its last event in the period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from . import date_range, dimensions
from .dimensions import Dimension
from .plan import Counts, Groups, Plan
from .query_schema import compile_pattern

Event = dict[str, Any]
Getter = Callable[[Event, "Session"], Any]
NOT_INTERACTIONS = ("pageview", "performance")


class Session:
    __slots__ = ("first", "last_ts", "pageviews", "interactions", "entry_page", "exit_page")

    def __init__(self, first: Event) -> None:
        self.first = first
        self.last_ts = first["ts"]
        self.pageviews = 0
        self.interactions = 0
        self.entry_page: str | None = None
        self.exit_page: str | None = None

    @property
    def bounced(self) -> bool:
        return self.pageviews == 1 and self.interactions == 0

    @property
    def duration_ms(self) -> int:
        return int(self.last_ts - self.first["ts"])


def prop_value(properties: Any, key: str) -> str | None:
    """A property as a dimension value: text as it is, other JSON values as JSON text."""
    if not isinstance(properties, dict):
        return None
    value = properties.get(key)
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _time_getter(plan: Plan, granularity: str) -> Getter:
    hours: dict[int, str] = {}  # a label per local hour: events share few hours

    def get(event: Event, session: Session) -> str:
        local = date_range.local_ms(event["ts"], plan.offsets)
        hour = local // 3_600_000
        text = hours.get(hour)
        if text is None:
            moment = datetime.fromtimestamp(hour * 3600, UTC).replace(tzinfo=None)
            text = hours[hour] = date_range.label(moment, granularity)
        return text

    return get


def getter(dim: Dimension, plan: Plan) -> Getter:
    """How to read a dimension's value off an event and its session."""
    name, where = dim.name, dim.field
    if dim.kind == "time":
        return _time_getter(plan, where)
    if dim.kind == "prop":
        return lambda event, session: prop_value(event.get("properties"), where)
    if name == "event:name":
        # As SQL's coalesce(event_name, type): an empty name stays an empty name.
        return lambda event, session: (
            event["event_name"] if event.get("event_name") is not None else event.get("type")
        )
    if dim.kind == "event":
        return lambda event, session: event.get(where)
    if name == "visit:entry_page":
        return lambda event, session: session.entry_page
    if name == "visit:exit_page":
        return lambda event, session: session.exit_page
    if name == "visit:source":
        return lambda event, session: dimensions.source_of(
            session.first.get("referrer"), session.first.get("utm_source")
        )
    return lambda event, session: session.first.get(where)


def predicate(node: list[Any], plan: Plan) -> Callable[[Event, Session], bool]:
    """A filter (validated) as a function of an event and its session."""
    operator = node[0]
    if operator in ("and", "or"):
        children = [predicate(child, plan) for child in node[1]]
        combine = all if operator == "and" else any
        return lambda event, session: combine(child(event, session) for child in children)
    if operator == "not":
        child = predicate(node[1], plan)
        return lambda event, session: not child(event, session)
    dim = dimensions.parse(node[1])
    assert dim is not None
    get, clauses = getter(dim, plan), node[2]
    if operator in ("is", "is_not"):
        wanted = set(clauses)

        def match(value: Any) -> bool:
            return value in wanted
    elif operator in ("contains", "contains_not"):

        def match(value: Any) -> bool:
            return isinstance(value, str) and any(clause in value for clause in clauses)
    else:
        patterns = [compile_pattern(clause) for clause in clauses]

        def match(value: Any) -> bool:
            return isinstance(value, str) and any(p.search(value) for p in patterns)

    if operator.endswith("_not"):
        return lambda event, session: not match(get(event, session))
    return lambda event, session: match(get(event, session))


def evaluate(events: Iterable[Event], plan: Plan) -> Groups:
    """The plan's groups from the period's events of the site (each with ``ts`` in epoch
    milliseconds and a ``session_id``), in stored order (time, then insertion)."""
    ordered = sorted(events, key=lambda event: event["ts"])  # stable: ties keep stored order
    sessions: dict[str, Session] = {}
    for event in ordered:
        session = sessions.get(event["session_id"])
        if session is None:
            session = sessions[event["session_id"]] = Session(event)
        session.last_ts = event["ts"]
        kind = event.get("type")
        if kind == "pageview":
            session.pageviews += 1
            if session.entry_page is None:
                session.entry_page = event.get("pathname")
            session.exit_page = event.get("pathname")
        elif kind not in NOT_INTERACTIONS:
            session.interactions += 1

    getters = [getter(dim, plan) for dim in plan.dimensions]
    checks = [predicate(node, plan) for node in plan.filters]
    # Per group: per session in it, its events and pageviews in the group; its visitors.
    per_session: dict[tuple[Any, ...], dict[str, list[int]]] = {}
    visitors: dict[tuple[Any, ...], set[Any]] = {}
    for event in ordered:
        session = sessions[event["session_id"]]
        if not all(check(event, session) for check in checks):
            continue
        key = tuple(get(event, session) for get in getters)
        counts = per_session.setdefault(key, {}).setdefault(event["session_id"], [0, 0])
        counts[0] += 1
        counts[1] += event.get("type") == "pageview"
        visitors.setdefault(key, set()).add(session.first.get("user_id"))

    groups: Groups = {}
    for key, in_group in per_session.items():
        total = groups[key] = Counts(visitors=len(visitors[key]), visits=len(in_group))
        for session_id, (count, pageviews) in in_group.items():
            total.events += count
            total.pageviews += pageviews
            session = sessions[session_id]
            total.bounces += session.bounced
            total.duration_ms += session.duration_ms
    return groups

"""A validated query made concrete for one site: its period, its dimensions, what the back
ends must compute. Back ends answer a plan with ``Groups``: per combination of dimension
values, the counts every metric is made from (results.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from ..errors import ApiError
from . import date_range, dimensions
from .date_range import Period
from .dimensions import Dimension
from .query_schema import SESSION_METRICS, Query


@dataclass
class Counts:
    """What the metrics of one group are made from."""

    visitors: int = 0  # distinct visitors (user_id) with an event in the group
    visits: int = 0  # distinct sessions with an event in the group
    pageviews: int = 0  # pageview events in the group
    events: int = 0  # events in the group
    bounces: int = 0  # of those sessions, how many bounced (session_counts)
    duration_ms: int = 0  # sum of those sessions' durations


Groups = dict[tuple[Any, ...], Counts]


@dataclass(frozen=True)
class Plan:
    site_id: str
    period: Period
    dimensions: list[Dimension]
    filters: list[Any]
    # Bounce and duration: each session's first and last event, its pageviews.
    session_counts: bool
    # Offsets of the site's zone over the period (date_range.offsets), for time buckets.
    offsets: list[tuple[int, int]] = field(default_factory=list)

    def without_dimensions(self) -> Plan:
        return replace(self, dimensions=[])

    def filter_dimensions(self) -> list[Dimension]:
        """Every dimension the filters name."""
        found: list[Dimension] = []

        def walk(node: list[Any]) -> None:
            if node[0] in ("and", "or"):
                for child in node[1]:
                    walk(child)
            elif node[0] == "not":
                walk(node[1])
            else:
                parsed = dimensions.parse(node[1])
                assert parsed is not None  # validated
                found.append(parsed)

        for node in self.filters:
            walk(node)
        return found

    def visit_dimensions(self) -> list[Dimension]:
        """The visit dimensions grouped or filtered by, each once."""
        seen: dict[str, Dimension] = {}
        for dim in [*self.dimensions, *self.filter_dimensions()]:
            if dim.kind == "visit":
                seen.setdefault(dim.name, dim)
        return list(seen.values())

    def needs_sessions(self) -> bool:
        """Whether a back end must compute each session's table (first event and so on)."""
        return self.session_counts or bool(self.visit_dimensions())


def make_plan(query: Query, zone: ZoneInfo, period: Period) -> Plan:
    dims = []
    for name in query.dimensions:
        dim = dimensions.parse(name)
        assert dim is not None  # validated
        if dim.kind == "time":
            granularity = dim.field if dim.field != "auto" else date_range.auto_granularity(period)
            dim = Dimension(name, "time", granularity)
        dims.append(dim)
    return Plan(
        site_id=query.site_id,
        period=period,
        dimensions=dims,
        filters=query.filters,
        session_counts=any(metric in SESSION_METRICS for metric in query.metrics),
        offsets=date_range.offsets(zone, period.start, period.end),
    )


def timed_out(seconds: float) -> ApiError:
    """The answer to a query the store stopped at STATS_QUERY_TIMEOUT_SECONDS."""
    return ApiError(
        503,
        f"Query stopped after {seconds:g} s (STATS_QUERY_TIMEOUT_SECONDS): "
        "narrow the date range, the filters or the dimensions",
    )

"""Groups (plan.py) into the answer: metrics in the query's order, sorted, one page of rows."""

from __future__ import annotations

from typing import Any

from .plan import Counts, Groups
from .query_schema import Query


def metric(name: str, counts: Counts, total_visitors: int) -> int | float:
    """One metric of a group, rounded as Plausible rounds it."""
    if name == "views_per_visit":
        return round(counts.pageviews / counts.visits, 2) if counts.visits else 0.0
    if name == "bounce_rate":
        return round(100 * counts.bounces / counts.visits) if counts.visits else 0
    if name == "visit_duration":
        return round(counts.duration_ms / 1000 / counts.visits) if counts.visits else 0
    if name == "percentage":
        return round(100 * counts.visitors / total_visitors, 1) if total_visitors else 0.0
    return int(getattr(counts, name))


def default_order(query: Query) -> list[list[str]]:
    """Plausible's default: by the time dimension ascending if there is one, else by the first
    metric descending."""
    for name in query.dimensions:
        if name.startswith("time"):
            return [[name, "asc"]]
    return [[query.metrics[0], "desc"]]


def _sort_key(value: Any) -> tuple[int, Any]:
    # None sorts first, then numbers and text each among themselves.
    if value is None:
        return (0, "")
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))


def rows(query: Query, groups: Groups, total_visitors: int) -> list[dict[str, Any]]:
    """Every result row, sorted: by ``order_by`` (default: default_order), then by the
    dimension values ascending, so equal rows always come in the same order."""
    built = [
        {
            "metrics": [metric(name, counts, total_visitors) for name in query.metrics],
            "dimensions": list(key),
        }
        for key, counts in groups.items()
    ]
    order = query.order_by or default_order(query)
    # Python's sort is stable: sort by the tie-breakers first, the leading key last.
    built.sort(key=lambda row: [_sort_key(v) for v in row["dimensions"]])
    for name, direction in reversed(order):
        if name in query.metrics:
            index = query.metrics.index(name)
            built.sort(
                key=lambda row: _sort_key(row["metrics"][index]), reverse=direction == "desc"
            )
        else:
            index = query.dimensions.index(name)
            built.sort(
                key=lambda row: _sort_key(row["dimensions"][index]), reverse=direction == "desc"
            )
    return built

"""A plan as SQL on the embedded store.

Events are read through the (site_id, ts) index and their stats columns (session_id, user_id,
pathname, hostname, event_name: schema version 2 of storage/sqlite.py); the JSON document is
parsed only for a property dimension, and for the visit dimensions once per session (of its
first event). When sessions matter (bounce rate, visit duration, visit dimensions), a
temporary table holds one row per session of the period, keyed by its id, and each event finds
its session there by that key: a join of two subqueries had no index to use (SQLite made it a
nested scan, minutes for a site's month).

Definitions are engine.py's, which says them in Python.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from typing import Any

from .. import native
from ..storage import SQLiteStorage
from ..storage.codec import to_ms
from . import dimensions
from .dimensions import Dimension
from .plan import Counts, Groups, Plan, timed_out
from .query_schema import compile_pattern

_FORMATS = {
    "hour": "strftime('%Y-%m-%d %H:00:00', {local}, 'unixepoch')",
    "day": "date({local}, 'unixepoch')",
    "week": "date({local}, 'unixepoch', '-6 days', 'weekday 1')",  # the Monday on or before
    "month": "strftime('%Y-%m-01', {local}, 'unixepoch')",
}
_IN_PERIOD = "e.site_id = ? AND e.ts >= ? AND e.ts < ? AND e.session_id IS NOT NULL"


@functools.lru_cache(maxsize=256)
def _pattern(text: str) -> Any:
    return compile_pattern(text)


def _regexp(pattern: str, value: Any) -> int | None:
    if value is None or not isinstance(value, str):
        return None
    return 1 if _pattern(pattern).search(value) else 0


class _Sql:
    """SQL text and its parameters, built together in order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.params: list[Any] = []
        self.visit_columns: dict[str, str] = {
            dim.name: f"v{index}" for index, dim in enumerate(plan.visit_dimensions())
        }

    def value(self, dim: Dimension) -> str:
        """The SQL of a dimension's value for an event ``e`` (and its session ``s``)."""
        if dim.kind == "time":
            cases = " ".join(
                f"WHEN e.ts < {until} THEN {offset}" for until, offset in self.plan.offsets[:-1]
            )
            last = self.plan.offsets[-1][1]
            shift = f"CASE {cases} ELSE {last} END" if cases else str(last)
            return _FORMATS[dim.field].format(local=f"((e.ts + {shift}) / 1000)")
        if dim.kind == "prop":
            path = f"'$.properties.{dim.field}'"  # the key matched dimensions.PROP_KEY
            return (
                f"(CASE json_type(e.doc, {path}) WHEN 'text' THEN json_extract(e.doc, {path}) "
                f"WHEN 'null' THEN NULL ELSE e.doc -> {path} END)"
            )
        if dim.name == "event:name":
            return "coalesce(e.event_name, e.type)"
        if dim.kind == "event":
            return f"e.{dim.field}"
        return f"s.{self.visit_columns[dim.name]}"

    def condition(self, node: list[Any]) -> str:
        """A filter as an expression that is 0 or 1, never NULL (so NOT works)."""
        operator = node[0]
        if operator in ("and", "or"):
            return "(" + f" {operator.upper()} ".join(self.condition(c) for c in node[1]) + ")"
        if operator == "not":
            return f"(NOT {self.condition(node[1])})"
        dim = dimensions.parse(node[1])
        assert dim is not None
        value, clauses = self.value(dim), node[2]
        if operator in ("is", "is_not"):
            self.params += clauses
            test = f"{value} IN ({', '.join('?' * len(clauses))})"
        elif operator in ("contains", "contains_not"):
            self.params += clauses
            test = " OR ".join(f"instr({value}, ?) > 0" for _ in clauses)
        else:
            self.params += clauses
            test = " OR ".join(f"rb_regexp(?, {value})" for _ in clauses)
        matched = f"coalesce(({test}), 0)"
        return f"(NOT {matched})" if operator.endswith("_not") else matched


def _period(plan: Plan) -> list[Any]:
    return [plan.site_id, to_ms(plan.period.start), to_ms(plan.period.end)]


def _make_sessions(conn: sqlite3.Connection, plan: Plan, sql: _Sql) -> None:
    """The temporary table ``ses``: one row per session with events in the period."""
    visit_columns = "".join(f", {column} TEXT" for column in sql.visit_columns.values())
    conn.execute(
        "CREATE TEMP TABLE ses (sid TEXT PRIMARY KEY, first_ts INTEGER, last_ts INTEGER, "
        "pageviews INTEGER, interactions INTEGER, first_pv INTEGER, last_pv INTEGER, "
        f"entry_seq INTEGER{visit_columns}) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO ses (sid, first_ts, last_ts, pageviews, interactions, first_pv, last_pv) "
        "SELECT e.session_id, min(e.ts), max(e.ts), sum(e.type = 'pageview'), "
        "sum(e.type NOT IN ('pageview', 'performance')), "
        "min(CASE WHEN e.type = 'pageview' THEN e.ts END), "
        "max(CASE WHEN e.type = 'pageview' THEN e.ts END) "
        f"FROM events e WHERE {_IN_PERIOD} GROUP BY e.session_id",
        _period(plan),
    )
    if not sql.visit_columns:
        return
    # Each lookup is one seek on the (site_id, ts) index: the events of that millisecond.
    same_moment = "FROM events x WHERE x.site_id = ? AND x.ts = ses.{ts} AND x.session_id = ses.sid"
    assignments = [
        f"entry_seq = (SELECT x.seq {same_moment.format(ts='first_ts')} ORDER BY x.seq LIMIT 1)"
    ]
    params = [plan.site_id]
    for name, column in sql.visit_columns.items():
        if name == "visit:entry_page":
            assignments.append(
                f"{column} = (SELECT x.pathname {same_moment.format(ts='first_pv')} "
                "AND x.type = 'pageview' ORDER BY x.seq LIMIT 1)"
            )
            params.append(plan.site_id)
        elif name == "visit:exit_page":
            assignments.append(
                f"{column} = (SELECT x.pathname {same_moment.format(ts='last_pv')} "
                "AND x.type = 'pageview' ORDER BY x.seq DESC LIMIT 1)"
            )
            params.append(plan.site_id)
    conn.execute(f"UPDATE ses SET {', '.join(assignments)}", params)
    # The rest from the first event's document, found by its row id.
    reads = []
    for name, column in sql.visit_columns.items():
        if name in ("visit:entry_page", "visit:exit_page"):
            continue
        if name == "visit:source":
            reads.append(
                (
                    column,
                    "rb_source(json_extract(doc, '$.referrer'), json_extract(doc, '$.utm_source'))",
                )
            )
        else:
            field = dimensions.VISIT_FIELDS[name]
            reads.append((column, f"json_extract(doc, '$.{field}')"))
    if reads:
        targets = ", ".join(column for column, _ in reads)
        values = ", ".join(expression for _, expression in reads)
        conn.execute(
            f"UPDATE ses SET ({targets}) = (SELECT {values} FROM events WHERE seq = ses.entry_seq)"
        )


def _query(store: SQLiteStorage, plan: Plan, timeout: float) -> Groups:
    sql = _Sql(plan)
    keys = [f"d{index}" for index in range(len(plan.dimensions))]
    selected = [
        f"{sql.value(dim)} AS {key}" for dim, key in zip(plan.dimensions, keys, strict=True)
    ]
    select_params = list(sql.params)
    sql.params = []
    conditions = [sql.condition(node) for node in plan.filters]
    filter_params = sql.params
    sessions = plan.needs_sessions()
    per_session = [
        "e.session_id AS sid",
        "min(e.user_id) AS uid",
        "count(*) AS n",
        "sum(e.type = 'pageview') AS pv",
    ]
    if plan.session_counts:
        per_session += [
            "max(s.pageviews = 1 AND s.interactions = 0) AS bounced",
            "max(s.last_ts - s.first_ts) AS duration",
        ]
    else:
        per_session += ["0 AS bounced", "0 AS duration"]
    join = " CROSS JOIN ses s ON s.sid = e.session_id" if sessions else ""  # events first
    where = " AND ".join([_IN_PERIOD, *conditions])
    group = ", ".join([*keys, "e.session_id"])
    outer_keys = "".join(f"{key}, " for key in keys)
    text = (
        f"WITH g AS (SELECT {', '.join([*selected, *per_session])} FROM events e{join} "
        f"WHERE {where} GROUP BY {group}) "
        f"SELECT {outer_keys}count(DISTINCT uid), count(*), sum(pv), sum(n), sum(bounced), "
        f"sum(duration) FROM g" + (f" GROUP BY {', '.join(keys)}" if keys else "")
    )
    conn = store.stats_connection()
    deadline = time.monotonic() + timeout
    # SQLite calls this every 10,000 virtual machine steps (well under a millisecond); a
    # true answer interrupts the statement.
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        conn.create_function("rb_regexp", 2, _regexp, deterministic=True)
        conn.create_function("rb_source", 2, dimensions.source_of, deterministic=True)
        if sessions:
            _make_sessions(conn, plan, sql)
        rows = conn.execute(text, [*select_params, *_period(plan), *filter_params]).fetchall()
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline:
            raise timed_out(timeout) from exc
        with store.op():  # anything else as the store's other errors: a 503
            raise
    finally:
        conn.close()
    groups: Groups = {}
    width = len(keys)
    for row in rows:
        if not row[width + 1]:  # no dimensions and no events: the one empty row
            continue
        groups[tuple(row[:width])] = Counts(*(int(v or 0) for v in row[width:]))
    return groups


def run(store: SQLiteStorage, plan: Plan, timeout: float) -> Groups:
    """The plan's groups, computed by SQLite (off a gevent worker's loop: it blocks)."""
    return native.off_loop(lambda _: _query(store, plan, timeout))(None)

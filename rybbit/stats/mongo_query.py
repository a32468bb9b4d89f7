"""A plan on MongoDB: the server selects the site's events of the period (an aggregation
pipeline on the (site_id, timestamp) index, projected to the fields the plan reads), and
engine.py groups them.

The whole computation in the pipeline (``$group`` per session, then per dimension values, with
``$cond`` and ``$dateToString`` in the site's zone) is what a MongoDB server would run, but
FerretDB 1.24, the server these tests have, answers "not implemented yet" (code 238) for
``$cond``, ``$dateToString``, ``$setWindowFields`` and even ``$group``'s ``$min`` (checked by
hand against it); this path works on both and is the one tested here. See
docs/stats.md for its cost.
"""

from __future__ import annotations

import time
from typing import Any

import pymongo.errors

from ..storage import MongoStorage
from ..storage.codec import to_ms
from ..store_errors import StoreUnavailable
from . import engine
from .plan import Groups, Plan, timed_out

# What every plan reads of an event.
_ALWAYS = ("timestamp", "type", "session_id", "user_id", "pathname")


def pipeline(plan: Plan) -> list[dict[str, Any]]:
    fields = set(_ALWAYS)
    for dim in [*plan.dimensions, *plan.filter_dimensions()]:
        if dim.kind == "prop":
            fields.add(f"properties.{dim.field}")
        elif dim.name == "visit:source":
            fields.update(("referrer", "utm_source"))
        elif dim.kind in ("event", "visit") and dim.name not in (
            "visit:entry_page",
            "visit:exit_page",
        ):
            fields.add(dim.field)
    return [
        {
            "$match": {
                "site_id": plan.site_id,
                "timestamp": {"$gte": plan.period.start, "$lt": plan.period.end},
                "session_id": {"$ne": None},
            }
        },
        # Stored order: time, then insertion (_id), which engine keeps for ties.
        {"$sort": {"timestamp": 1, "_id": 1}},
        {"$project": {"_id": 0, **{name: 1 for name in sorted(fields)}}},
    ]


def run(store: MongoStorage, plan: Plan, timeout: float) -> Groups:
    """The plan's groups; the server stops the pipeline after ``timeout`` seconds."""
    events = []
    # The server's maxTimeMS bounds the pipeline; this bounds the reading of its answer here
    # too, so a long period of a busy site ends in the documented 503, not a killed worker.
    deadline = time.monotonic() + timeout
    try:
        with store.op():
            cursor = store.events.aggregate(
                pipeline(plan),
                allowDiskUse=True,
                batchSize=10_000,
                maxTimeMS=max(1, int(timeout * 1000)),
            )
            for doc in cursor:
                doc["ts"] = to_ms(doc.pop("timestamp"))
                events.append(doc)
                if len(events) % 10_000 == 0 and time.monotonic() > deadline:
                    cursor.close()
                    raise timed_out(timeout)
    except StoreUnavailable as exc:
        if isinstance(exc.__cause__, pymongo.errors.ExecutionTimeout):
            raise timed_out(timeout) from exc
        raise
    return engine.evaluate(events, plan)

"""The stats query API, ``POST /api/v2/query``: the query (query_schema), its period
(date_range), what can be grouped and filtered by (dimensions), one query builder per back
end (sqlite_query, mongo_query, with engine for MongoDB servers that lack the pipeline's
operators), the answer (results) and the route (routes)."""

from __future__ import annotations

from flask import Flask

from . import routes


def init_app(app: Flask) -> None:
    routes.init_app(app)

"""The body of ``POST /api/v2/query``, validated with Marshmallow into a ``Query``.

Mistakes are answered 400 with a message naming the field, as Plausible does
(``#/metrics/0: Unknown metric 'foo'``), in the contract's error shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import re2
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..errors import ApiError
from ..schemas import NUMERIC_SITE_ID
from . import dimensions
from .date_range import RELATIVE

METRICS = (
    "visitors",
    "visits",
    "pageviews",
    "events",
    "views_per_visit",
    "bounce_rate",
    "visit_duration",
    "percentage",
)
# Metrics that need each session's first and last event (the session table).
SESSION_METRICS = ("bounce_rate", "visit_duration")
OPERATORS = ("is", "is_not", "contains", "contains_not", "matches", "matches_not")
LOGICAL = ("and", "or", "not")
MAX_CLAUSES = 100
MAX_FILTER_DEPTH = 8
# Values of all the filters of one query together: each becomes a term (and a bound
# parameter) of one SQL expression, and SQLite refuses expressions past 1000 terms deep.
MAX_FILTER_VALUES = 500
# Custom date ranges: years a calendar and every time zone can hold, and at most ten years
# (a time dimension's buckets and labels grow with the span).
YEARS = range(1970, 2201)
MAX_RANGE_DAYS = 3660
MAX_PATTERN = 256
MAX_LIMIT = 10_000
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20  # a pattern's compiled program stays small
_RE2_OPTIONS.log_errors = False  # a client's bad pattern is its 400, not our log line
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Query:
    site_id: str
    metrics: list[str]
    date_range: str | list[str]
    dimensions: list[str] = field(default_factory=list)
    filters: list[Any] = field(default_factory=list)
    order_by: list[list[str]] | None = None
    total_rows: bool = False
    time_labels: bool = False
    limit: int = MAX_LIMIT
    offset: int = 0


def compile_pattern(pattern: str) -> Any:
    """A regular expression for ``matches``: RE2, which runs in time linear in its input (no
    backtracking), so no pattern can make a query run away."""
    return re2.compile(pattern, _RE2_OPTIONS)


def _check_filter(value: Any, path: str, depth: int = 0) -> None:
    """Raise ValidationError({path: message}) for the first mistake in one filter."""
    if depth > MAX_FILTER_DEPTH:
        raise ValidationError({path: [f"Filters nest at most {MAX_FILTER_DEPTH} levels"]})
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValidationError({path: ["Invalid filter: expected [operator, dimension, values]"]})
    operator = value[0]
    if operator in ("and", "or"):
        if len(value) != 2 or not isinstance(value[1], list) or not value[1]:
            raise ValidationError({path: [f"Invalid filter: expected ['{operator}', [filters]]"]})
        for index, child in enumerate(value[1]):
            _check_filter(child, f"{path}/1/{index}", depth + 1)
        return
    if operator == "not":
        if len(value) != 2:
            raise ValidationError({path: ["Invalid filter: expected ['not', filter]"]})
        _check_filter(value[1], f"{path}/1", depth + 1)
        return
    if operator not in OPERATORS:
        raise ValidationError({f"{path}/0": [f"Unknown filter operator '{operator}'"]})
    if len(value) != 3:
        raise ValidationError({path: ["Invalid filter: expected [operator, dimension, values]"]})
    _, name, clauses = value
    if not isinstance(name, str) or dimensions.parse(name) is None:
        raise ValidationError({f"{path}/1": [f"Unknown dimension '{name}'"]})
    if name.startswith("time"):
        raise ValidationError({f"{path}/1": ["Filter on the date range instead of time"]})
    if (
        not isinstance(clauses, list)
        or not 1 <= len(clauses) <= MAX_CLAUSES
        or not all(isinstance(clause, str) and len(clause) <= 2048 for clause in clauses)
    ):
        raise ValidationError(
            {f"{path}/2": [f"Expected a list of 1 to {MAX_CLAUSES} strings (each <= 2048)"]}
        )
    if operator.startswith("matches"):
        for index, clause in enumerate(clauses):
            if len(clause) > MAX_PATTERN:
                raise ValidationError(
                    {f"{path}/2/{index}": [f"Pattern longer than {MAX_PATTERN} characters"]}
                )
            try:
                compile_pattern(clause)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                raise ValidationError(
                    {f"{path}/2/{index}": [f"Invalid regular expression: {reason}"]}
                ) from None


def _check_date_range(value: Any) -> None:
    if isinstance(value, str):
        if value not in RELATIVE:
            raise ValidationError(f"Unknown date range '{value}': use one of {', '.join(RELATIVE)}")
        return
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValidationError("Expected a relative range or two ISO 8601 dates or date-times")
    first, last = value
    if _ISO_DATE.fullmatch(first) and _ISO_DATE.fullmatch(last):
        try:
            start, end = date.fromisoformat(first), date.fromisoformat(last)
        except ValueError:
            raise ValidationError("Invalid date") from None
        if start > end:
            raise ValidationError("The range ends before it starts")
        _check_span(start, end)
        return
    try:
        moments = [datetime.fromisoformat(v.replace("Z", "+00:00")) for v in value]
    except ValueError:
        raise ValidationError("Expected two ISO 8601 dates or date-times") from None
    if any(
        moment.tzinfo is None or "T" not in text
        for moment, text in zip(moments, value, strict=True)
    ):
        raise ValidationError("Date-times need a time and a UTC offset (2026-01-01T00:00:00Z)")
    if moments[0] >= moments[1]:
        raise ValidationError("The range ends before it starts")
    _check_span(moments[0].date(), moments[1].date())


def _check_span(start: date, end: date) -> None:
    if start.year not in YEARS or end.year not in YEARS:
        raise ValidationError(f"Dates must fall in the years {YEARS[0]} to {YEARS[-1]}")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise ValidationError(f"A date range spans at most {MAX_RANGE_DAYS} days")


def _filter_values(value: Any) -> int:
    """How many values a (valid) filter holds, through its and/or/not."""
    if value[0] in ("and", "or"):
        return sum(_filter_values(child) for child in value[1])
    if value[0] == "not":
        return _filter_values(value[1])
    return len(value[2])


class _DateRange(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        _check_date_range(value)
        if isinstance(value, list) and "T" in value[0]:
            return [datetime.fromisoformat(v.replace("Z", "+00:00")).isoformat() for v in value]
        return value


class _Metric(fields.String):
    """A metric's name (validated here, so the message names it)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if text not in METRICS:
            raise ValidationError(f"Unknown metric '{text}'")
        return text


class _DimensionName(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if dimensions.parse(text) is None:
            raise ValidationError(f"Unknown dimension '{text}'")
        return text


class _Filter(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            _check_filter(value, "")
        except ValidationError as exc:
            # The path inside the filter, after the filter's own index.
            ((where, messages),) = exc.normalized_messages().items()
            raise ValidationError(
                f"{where.lstrip('/')}: {messages[0]}" if where else messages[0]
            ) from None
        return value


class _OrderBy(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or value[1] not in ("asc", "desc")
        ):
            raise ValidationError("Expected [metric or dimension, 'asc' or 'desc']")
        return value


class IncludeSchema(Schema):
    class Meta:
        unknown = RAISE

    total_rows = fields.Boolean(load_default=False)
    time_labels = fields.Boolean(load_default=False)


class PaginationSchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        strict=True, load_default=MAX_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT)
    )
    offset = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0))


class QuerySchema(Schema):
    """A stats query (Plausible's Stats API v2 shape)."""

    class Meta:
        unknown = RAISE

    site_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    metrics = fields.List(
        _Metric(metadata={"enum": list(METRICS)}),
        required=True,
        validate=validate.Length(min=1, max=20),
    )
    date_range = _DateRange(
        required=True,
        metadata={
            "description": f"One of {', '.join(RELATIVE)}, or [first, last] ISO dates (both "
            "included) or date-times with offsets (end excluded)",
            "oneOf": [
                {"type": "string", "enum": list(RELATIVE)},
                {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
            ],
        },
    )
    dimensions = fields.List(_DimensionName(), load_default=list, validate=validate.Length(max=5))
    filters = fields.List(
        _Filter(
            metadata={
                "type": "array",
                "description": "[operator, dimension, [values]] with operator one of "
                f"{', '.join(OPERATORS)}; or ['and' | 'or', [filters]] or ['not', filter]",
            }
        ),
        load_default=list,
        validate=validate.Length(max=50),
    )
    order_by = fields.List(
        _OrderBy(
            metadata={
                "type": "array",
                "description": "[metric or dimension, 'asc' | 'desc']",
                "items": {"type": "string"},
            }
        ),
        validate=validate.Length(min=1, max=10),
    )
    include = fields.Nested(IncludeSchema, load_default=dict)
    pagination = fields.Nested(PaginationSchema, load_default=dict)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        metrics, dims = data.get("metrics", []), data.get("dimensions", [])
        for index, metric in enumerate(metrics):
            if metric in metrics[:index]:
                raise ValidationError({"metrics": {index: [f"Metric '{metric}' given twice"]}})
        for index, name in enumerate(dims):
            if name in dims[:index]:
                raise ValidationError({"dimensions": {index: [f"Dimension '{name}' given twice"]}})
        if sum(name.startswith("time") for name in dims) > 1:
            raise ValidationError({"dimensions": ["At most one time dimension"]})
        if "percentage" in metrics and not dims:
            raise ValidationError({"metrics": ["Metric 'percentage' needs a dimension"]})
        for index, (name, _) in enumerate(data.get("order_by") or []):
            if name not in metrics and name not in dims:
                raise ValidationError(
                    {"order_by": {index: [f"'{name}' is neither a queried metric nor dimension"]}}
                )
        if sum(_filter_values(each) for each in data.get("filters", [])) > MAX_FILTER_VALUES:
            raise ValidationError(
                {"filters": [f"Filters hold at most {MAX_FILTER_VALUES} values in all"]}
            )
        include = data.get("include") or {}
        if include.get("time_labels") and not any(name.startswith("time") for name in dims):
            raise ValidationError({"include": {"time_labels": ["Needs a time dimension"]}})


_schema = QuerySchema()


def load_query(body: dict[str, Any]) -> Query:
    """The query in ``body``; a 400 ApiError naming the first mistake otherwise."""
    site_id = body.get("site_id")
    if isinstance(site_id, int) and not isinstance(site_id, bool):
        body = {**body, "site_id": str(site_id)}  # Rybbit's numeric ids, as /api/track
    elif isinstance(site_id, str) and NUMERIC_SITE_ID.fullmatch(site_id) and len(site_id) < 256:
        body = {**body, "site_id": str(int(site_id))}  # "01" is site 1, as /api/track reads it
    try:
        data = _schema.load(body)
    except ValidationError as exc:
        path, message = _first_error(exc.normalized_messages())
        raise ApiError(
            400,
            f"#/{path}: {message}" if path else message,
            {
                # Dotted, as the contract's other fieldErrors keys are.
                "fieldErrors": {path.replace("/", "."): [message]} if path else {},
                "formErrors": [] if path else [message],
            },
        ) from None
    # A missing object's defaults (Marshmallow's load_default skips the nested schema).
    include = {"total_rows": False, "time_labels": False, **data["include"]}
    pagination = {"limit": MAX_LIMIT, "offset": 0, **data["pagination"]}
    return Query(
        site_id=data["site_id"],
        metrics=data["metrics"],
        date_range=data["date_range"],
        dimensions=data["dimensions"],
        filters=data["filters"],
        order_by=data.get("order_by"),
        total_rows=include["total_rows"],
        time_labels=include["time_labels"],
        limit=pagination["limit"],
        offset=pagination["offset"],
    )


def _first_error(messages: Any, path: str = "") -> tuple[str, str]:
    """The JSON-pointer-like path and the message of the first error Marshmallow found."""
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        if key == "_schema":
            return _first_error(value, path)
        if key == "Unknown field.":  # never a key; kept for symmetry
            return path, str(key)
        if value == ["Unknown field."]:
            return f"{path}/{key}".lstrip("/"), f"Unknown field '{key}'"
        return _first_error(value, f"{path}/{key}".lstrip("/"))
    if isinstance(messages, list):
        first = messages[0]
        if (
            isinstance(first, str)
            and ": " in first
            and first.split(": ", 1)[0].replace("/", "").isdigit()
        ):
            inner, text = first.split(": ", 1)  # a filter's own path (see _Filter)
            return f"{path}/{inner}", text
        return _first_error(first, path) if not isinstance(first, str) else (path, first)
    return path, str(messages)

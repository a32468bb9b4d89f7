"""Reading JSON request bodies and loading them through a schema, with contract errors."""

from __future__ import annotations

import zlib
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from .errors import ApiError, InvalidPayload
from .fast_schema import fast_load
from .schemas import (
    TrackEventSchema,
    js_type,
    loads_strict,
    validation_error_to_invalid_payload,
)


def _is_json_mimetype(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def read_json() -> Any:
    """The request body parsed as JSON, or an InvalidPayload saying what is wrong with it.

    The size cap is the request's ``max_content_length`` (``MAX_CONTENT_LENGTH`` unless a
    route raised it), applied before parsing and again to a gzip body's inflated size.
    """
    if not _is_json_mimetype(request.mimetype):
        raise InvalidPayload(form_errors=["Content-Type must be application/json"])
    raw = _read_body()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "gzip":
        raw = gunzip(raw, limit=int(request.max_content_length or 0))
    elif encoding not in ("", "identity"):
        raise ApiError(415, "Unsupported Content-Encoding: use gzip or none")
    try:
        return loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidPayload(form_errors=[f"Malformed JSON: {reason}"]) from None


def _read_body() -> bytes:
    """The raw body; 413 when it is over the cap, whether its length was announced or not."""
    limit = request.max_content_length
    if request.content_length is None and limit is not None:
        # A chunked body: Werkzeug stops reading at the cap without saying the body went on,
        # so a body cut there could be accepted. One byte more tells.
        raw = request.stream.read(limit)
        if len(raw) == limit and request.environ["wsgi.input"].read(1):
            raise ApiError(413, "Payload too large")
        return raw
    length = request.content_length
    if length is None:  # chunked, and no cap: all of it
        return request.get_data(cache=False)
    if limit is not None and length > limit:
        raise ApiError(413, "Payload too large")  # before reading or parsing any of it
    # The announced length, straight from the server's stream (werkzeug's get_data wraps it
    # in a limiting stream first, several times the cost of the read for a small body). A
    # client that sends less than it announced ends the read early: malformed JSON, a 400.
    return request.environ["wsgi.input"].read(length) if length else b""


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object, or an InvalidPayload saying what is wrong with it."""
    body = read_json()
    if not isinstance(body, dict):
        raise InvalidPayload(form_errors=[f"Expected object, received {js_type(body)}"])
    return body


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body, refusing anything that inflates past ``limit`` bytes.

    Inflation stops at ``limit + 1`` bytes, so a decompression bomb costs no more memory or time
    than an honest body of the largest accepted size.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise InvalidPayload(form_errors=["Malformed gzip body"]) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, "Payload too large")
    if not inflater.eof or inflater.unused_data:
        raise InvalidPayload(form_errors=["Malformed gzip body"])
    return out


def load(schema: Schema, data: dict[str, Any]) -> dict[str, Any]:
    """``schema.load(data)``, with failures raised as the contract's 400. Tracking events of
    the common shapes take the fast path, which answers as the schema would (fast_schema)."""
    if isinstance(schema, TrackEventSchema):
        loaded = fast_load(schema, data)
        if loaded is not None:
            return loaded
    try:
        return schema.load(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise validation_error_to_invalid_payload(schema, exc, data) from None

"""Every error leaves the service as JSON in the contract's ``success``/``error`` shape."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from .store_errors import EventsRefused, StoreUnavailable

log = logging.getLogger(__name__)

# Short, stable messages for the statuses a client can meet; Werkzeug's own are prose.
_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ApiError(Exception):
    """An error answered with ``{"success": false, "error": message}`` and ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}


class InvalidPayload(ApiError):
    """A 400 with zod-style ``details``: ``fieldErrors`` per field and ``formErrors``."""

    def __init__(
        self,
        field_errors: dict[str, list[str]] | None = None,
        form_errors: list[str] | None = None,
    ) -> None:
        details = {"fieldErrors": field_errors or {}, "formErrors": form_errors or []}
        super().__init__(400, "Invalid payload", details)


def error_response(status: int, message: str, details: Any = None) -> Response:
    body: dict[str, Any] = {"success": False, "error": message}
    if details is not None:
        body["details"] = details
    response = jsonify(body)
    response.status_code = status
    return response


def _handle_api_error(exc: ApiError) -> Response:
    response = error_response(exc.status, exc.message, exc.details)
    response.headers.update(exc.headers)
    return response


def _handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = error_response(status, _MESSAGES.get(status, exc.name))
    # Keep headers such as Allow on 405.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _handle_store_unavailable(exc: StoreUnavailable) -> Response:
    response = error_response(503, "Storage unavailable, please retry")
    response.headers["Retry-After"] = str(current_app.config["STORE_RETRY_AFTER"])
    return response


def refused_details(reason: str) -> dict[str, list[Any]]:
    """The 400 details for an event the store would not hold (see store_errors)."""
    return {"fieldErrors": {}, "formErrors": [f"The store refused this event: {reason}"]}


def _handle_events_refused(exc: EventsRefused) -> Response:
    # /api/track writes one event, so there is one reason; retrying would not help.
    reason = next(iter(exc.reasons.values()), "")
    return error_response(400, "Invalid payload", refused_details(reason))


def _handle_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, _MESSAGES[500])


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(StoreUnavailable, _handle_store_unavailable)
    app.register_error_handler(EventsRefused, _handle_events_refused)
    app.register_error_handler(Exception, _handle_unexpected)

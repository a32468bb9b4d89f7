"""One log line per request, from logger ``rybbit.request`` (gunicorn's access log is off).

Fields beside the message ``request``: ``method``, ``path`` (never the query string), ``route``
(the URL rule, absent when none matched), ``status``, ``duration_ms``; ``site_id`` and
``key_prefix`` once an API key authenticated (for a batch that used several keys, each value
once, comma-separated), or for a refused key (403) the prefix of the key sent if it is
well-formed; ``client_ip`` only when every site involved keeps IPs (``track_ip``). Never an API
key, the admin or metrics token, a header, or, for a site that did not opt in, an IP address.

Health probes and scrapes (``/healthz``, ``/readyz``, ``/metrics``) are logged at DEBUG, below
the default level; server errors (5xx) at WARNING.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from . import keys, sites

log = logging.getLogger("rybbit.request")

_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_KEYS = "request_log_keys"
_STARTED = "request_log_started"


def note_key(site: dict[str, Any], key: dict[str, Any]) -> None:
    """Record that this request authenticated ``key``, a key of ``site``."""
    g.setdefault(_KEYS, {})[key["_id"]] = (site, key)


def _start_clock() -> None:
    setattr(g, _STARTED, time.perf_counter())


def _fields(response: Response) -> dict[str, Any]:
    state = g._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not many
    req = request._get_current_object()  # type: ignore[attr-defined]
    started = getattr(state, _STARTED, None)
    fields: dict[str, Any] = {
        "method": req.method,
        "path": req.path,
        "status": response.status_code,
    }
    if req.url_rule is not None:
        fields["route"] = req.url_rule.rule
    if started is not None:
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
    used: dict[str, tuple[dict[str, Any], dict[str, Any]]] = getattr(state, _KEYS, None) or {}
    payload = getattr(state, "payload", None)  # /api/track's validated body, if it got that far
    if used:
        site_docs = {site["_id"]: site for site, _ in used.values()}
        fields["site_id"] = ",".join(sorted(site_docs))
        fields["key_prefix"] = ",".join(sorted({key["prefix"] for _, key in used.values()}))
        if all(sites.settings_of(site).get("track_ip") for site in site_docs.values()):
            # The address the event is attributed to: the body's, else the peer's.
            body_ip = payload.get("ip_address") if payload else None
            fields["client_ip"] = body_ip or req.remote_addr
    elif getattr(state, "api_key", False) is None and getattr(state, "site", None) is not None:
        # A keyless (browser) request whose origin was accepted: its site, and no key.
        fields["site_id"] = str(state.site["_id"])
        fields["keyless"] = True
    elif response.status_code == 403 and payload:
        # A refused key: its prefix (only of a well-formed key) tells which one is still in use.
        fields["site_id"] = str(payload["site_id"])  # the site exists: otherwise a 404
        api_key = payload.get("api_key")  # none on a keyless event from a refused origin
        if api_key is not None and keys.KEY_FORMAT.fullmatch(api_key):
            fields["key_prefix"] = keys.key_prefix(api_key)
    return fields


def _log_request(response: Response) -> Response:
    rule = request.url_rule
    if rule is not None and rule.rule in _QUIET_ROUTES:
        level = logging.DEBUG
    elif response.status_code >= 500:
        level = logging.WARNING
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        # The record made directly and handed to the logger's handlers and filters, as
        # log.log would: without its search of the stack for the caller (a line per request,
        # and the caller is always this function).
        record = log.makeRecord(
            log.name, level, __file__, 0, "request", None, None, extra=_fields(response)
        )
        record.funcName = "_log_request"
        log.handle(record)
    return response


def init_app(app: Flask) -> None:
    """Time every request and log it when its response is ready."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start_clock)  # before all others
    app.after_request(_log_request)

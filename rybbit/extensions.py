"""Flask extensions, created unbound here and bound in ``create_app``."""

from __future__ import annotations

from flask import g, request
from flask_cors import CORS
from flask_limiter import Limiter


def _api_key_or_address() -> str:
    # Only Flask-Limiter's own middleware calls this, for limits an operator sets app-wide
    # (RATELIMIT_DEFAULT, RATELIMIT_APPLICATION): per key where a route authenticated one,
    # else per client address. The tracking routes' limits are rybbit.ratelimit's.
    key = g.get("api_key")
    return str(key["_id"]) if key else str(request.remote_addr or "")


limiter = Limiter(key_func=_api_key_or_address)
cors = CORS()

"""Flask extensions, created unbound here and bound in ``create_app``."""

from __future__ import annotations

from flask import g
from flask_cors import CORS
from flask_limiter import Limiter


def _api_key_id() -> str:
    # The track blueprint authenticates before the limit is checked, so this is always set
    # on the routes the limit decorates: unauthenticated requests never spend any budget.
    return str(g.api_key["_id"])


limiter = Limiter(key_func=_api_key_id)
cors = CORS()

"""url_params: UTM fields and click ids from ``querystring``, plus every parameter.

``url_parameters`` keeps each parameter (keys lower-cased, first value, as Rybbit does) with
keys made safe for MongoDB the same way ``properties`` keys are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl
from rybbit.schemas import safe_key

PROMOTED = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "gclid")
MAX_PARAMETERS = 100


class UrlParamsEnricher(Enricher):
    name = "url_params"

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        query = event.get("querystring")
        if not query:
            return
        params, promoted = _parameters(query)
        if not params:
            return
        event["url_parameters"] = dict(params)  # each event its own: others may change it
        event.update(promoted)


# Many events carry one of a few querystrings (a campaign's link): each is parsed once.
# 1024 keys of up to ~2 kB (the querystring's limit) and their parameters at most.
@lru_cache(maxsize=1024)
def _parameters(query: str) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """The parameters kept of a querystring, and the promoted ones that have a value."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(query.lstrip("?"), keep_blank_values=True)[:MAX_PARAMETERS]:
        key = safe_key(key.lower())
        if key and key not in params:
            params[key] = value
    return params, tuple((name, params[name]) for name in PROMOTED if params.get(name))


@hookimpl
def register_enrichers(register: Any) -> None:
    register(UrlParamsEnricher())

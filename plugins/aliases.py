"""aliases: a keyless event without a ``user_id`` from a visitor who identified itself
(``POST /api/identify``) carries the user id it named, as in Rybbit.

Runs after identity, whose anonymous id names the visitor (same site, IP and user agent, same
day); the anonymous id stays on the event as ``anonymous_id``. Only keyless (browser) events
are looked up: identify comes from browsers, and a server's keyed events name their users
themselves, so they pay no extra store read.
"""

from __future__ import annotations

from typing import Any

from rybbit import aliases
from rybbit.plugin import Enricher, EnrichmentContext, hookimpl


class AliasesEnricher(Enricher):
    name = "aliases"
    # Before sessions (which keys on user_id): the runner breaks ties by name, and the test
    # suite checks the order (tests/test_browser.py).
    after = ("identity",)

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        if not event.get("anonymous") or event.get("api_key_id") or context.store is None:
            return
        user_id = aliases.find_alias(context.store, str(event["site_id"]), event["user_id"])
        if user_id is not None:
            event["anonymous_id"] = event["user_id"]
            event["user_id"] = user_id
            del event["anonymous"]


@hookimpl
def register_enrichers(register: Any) -> None:
    register(AliasesEnricher())

"""bots: flags crawlers and bots (``is_bot: true``, ``device_type: "Bot"``).

Detection uses the crawler-user-agents list (maintained upstream and released on PyPI), all of
its patterns compiled once into a single RE2 expression: ~2 us per user agent, cached per string.

Which user agent is judged: the body's ``user_agent`` (the visitor's, as the sending server
reports it). The request's own ``User-Agent`` header is judged only for keyless (browser)
events: on a keyed request it names the customer's server's HTTP client (WordPress,
libwww-perl, got, curl, ...), which says nothing about the visitor.

Flagging never drops a keyed event, as in Rybbit, which skips its bot check for requests with
an API key: the event is stored with ``is_bot`` so that queries can leave it out. A site's
``block_bots`` drops flagged keyless events only (see rybbit.site_rules).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import crawleruseragents
import re2

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

log = logging.getLogger(__name__)


def compile_patterns() -> Any:
    options = re2.Options()
    options.max_mem = 512 << 20  # the default budget is too small for ~1,500 alternatives
    patterns = [entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA]
    return re2.compile("|".join(f"(?:{p})" for p in patterns), options)


class BotsEnricher(Enricher):
    name = "bots"
    after = ("device",)  # its "Bot" device type has the last word

    def __init__(self) -> None:
        self.pattern = compile_patterns()
        self.is_bot = lru_cache(maxsize=8192)(self._match)

    def _match(self, ua_string: str) -> bool:
        return self.pattern.search(ua_string) is not None

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        ua_string = event.get("user_agent")
        if not ua_string and not event.get("api_key_id"):
            ua_string = context.headers.get("User-Agent", "")
        if ua_string and self.is_bot(ua_string):
            event["is_bot"] = True
            event["device_type"] = "Bot"


@hookimpl
def register_enrichers(register: Any) -> None:
    register(BotsEnricher())

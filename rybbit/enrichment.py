"""The enrichment step between validation and storage.

For now a plain ordered list of callables; the plugin system replaces how the list is built,
not where it runs. An enricher that raises is logged and skipped: the event is still stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask

log = logging.getLogger(__name__)

EXTENSION_KEY = "rybbit.enrichers"


@dataclass(frozen=True)
class EnrichmentContext:
    """What an enricher may read besides the event: the site and the request's transport facts."""

    site: dict[str, Any]
    #: The peer address of the HTTP connection.
    remote_addr: str | None
    #: The visitor's address: the body's ``ip_address``, else ``remote_addr``.
    client_ip: str | None
    headers: Mapping[str, str]


Enricher = Callable[[dict[str, Any], EnrichmentContext], None]


def init_app(app: Flask, enrichers: list[Enricher] | None = None) -> None:
    app.extensions[EXTENSION_KEY] = list(enrichers or [])


def register(app: Flask, enricher: Enricher) -> None:
    """Append ``enricher`` to the chain; enrichers run in the order they were registered."""
    app.extensions[EXTENSION_KEY].append(enricher)


def enrich(app: Flask, event: dict[str, Any], context: EnrichmentContext) -> None:
    """Run every enricher on ``event`` in order, isolating failures."""
    for enricher in app.extensions[EXTENSION_KEY]:
        try:
            enricher(event, context)
        except Exception:
            log.exception(
                "enricher %s failed; event stored without it",
                getattr(enricher, "__name__", repr(enricher)),
            )

"""The enrichment step: enrichers see the event and context, and cannot lose an event."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from rybbit import enrichment


def test_enrichers_run_in_order_and_add_fields(
    app: Flask, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    seen: list[Any] = []

    def first(event: dict[str, Any], context: enrichment.EnrichmentContext) -> None:
        seen.append((context.site["domain"], context.remote_addr, context.headers.get("X-Test")))
        event["order"] = ["first"]

    def second(event: dict[str, Any], context: enrichment.EnrichmentContext) -> None:
        event["order"].append("second")

    enrichment.register(app, first)
    enrichment.register(app, second)
    response = app.test_client().post(
        "/api/track",
        json={"api_key": api_key, "site_id": site["site_id"]},
        headers={"X-Test": "yes"},
    )
    assert response.status_code == 200
    assert stored_events()[0]["order"] == ["first", "second"]
    assert seen == [("example.com", "127.0.0.1", "yes")]


def test_failing_enricher_is_skipped_and_event_stored(
    app: Flask, post: Any, stored_events: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: dict[str, Any], context: enrichment.EnrichmentContext) -> None:
        raise RuntimeError("boom")

    def works(event: dict[str, Any], context: enrichment.EnrichmentContext) -> None:
        event["enriched"] = True

    enrichment.register(app, broken)
    enrichment.register(app, works)
    assert post(pathname="/p").status_code == 200
    (event,) = stored_events()
    assert event["pathname"] == "/p" and event["enriched"] is True
    assert any("enricher broken failed" in r.getMessage() for r in caplog.records)

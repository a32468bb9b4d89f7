"""POST /api/track/batch: per-item results, partial success, limits, idempotency."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import keys, sites
from rybbit.enrichment import Enricher, EnrichmentContext
from rybbit.store import get_store


@pytest.fixture
def good(site: dict[str, Any], api_key: str) -> dict[str, Any]:
    return {"api_key": api_key, "site_id": site["site_id"], "pathname": "/p"}


def batch(client: FlaskClient, body: Any, **kwargs: Any) -> Any:
    return client.post("/api/track/batch", json=body, **kwargs)


@pytest.mark.parametrize("wrap", [lambda items: items, lambda items: {"events": items}])
def test_valid_events_are_stored_and_reported(
    client: FlaskClient, good: dict[str, Any], stored_events: Any, wrap: Any
) -> None:
    items = [{**good, "pathname": f"/{i}"} for i in range(5)]
    response = batch(client, wrap(items))
    assert response.status_code == 200
    body = response.get_json()
    assert body == {
        "success": True,
        "accepted": 5,
        "rejected": 0,
        "results": [{"index": i, "success": True} for i in range(5)],
    }
    assert sorted(e["pathname"] for e in stored_events()) == [f"/{i}" for i in range(5)]


def test_partial_failure_keeps_the_valid_items(
    client: FlaskClient, good: dict[str, Any], stored_events: Any
) -> None:
    items = [
        good,
        {**good, "foo": 1},
        "text",
        {**good, "api_key": "rb_" + "0" * 32},
        {**good, "site_id": "999"},
        {**good, "type": "custom_event"},
        {**good, "pathname": "/last"},
    ]
    body = batch(client, items).get_json()
    assert (body["success"], body["accepted"], body["rejected"]) == (False, 2, 5)
    by_index = {r["index"]: r for r in body["results"]}
    assert by_index[1]["details"]["formErrors"] == ["Unrecognized key(s) in object: 'foo'"]
    assert by_index[2]["details"]["formErrors"] == ["Expected object, received string"]
    assert by_index[3]["error"] == "Invalid API key" and "details" not in by_index[3]
    assert by_index[4]["error"] == "Site not found"
    assert by_index[5]["details"]["fieldErrors"] == {"event_name": ["Required"]}
    assert sorted(e["pathname"] for e in stored_events()) == ["/last", "/p"]


def test_items_of_several_sites_and_keys(
    app: Flask, client: FlaskClient, good: dict[str, Any], stored_events: Any
) -> None:
    with app.app_context():
        other = sites.create_site(get_store(), name="o", domain="o.example")
        key = keys.create_key(get_store(), other["site_id"])["api_key"]
    body = batch(client, [good, {"api_key": key, "site_id": other["site_id"]}]).get_json()
    assert body["accepted"] == 2
    assert {e["site_id"] for e in stored_events()} == {good["site_id"], other["site_id"]}


def test_each_item_is_judged_by_its_own_site_and_key(
    app: Flask, client: FlaskClient, good: dict[str, Any], stored_events: Any
) -> None:
    """Pairs are authenticated once per batch: repeated and interleaved pairs, good or bad,
    still get each item its own outcome and its own key's id."""
    with app.app_context():
        other = sites.create_site(get_store(), name="o", domain="o.example")
        made = keys.create_key(get_store(), other["site_id"])
    theirs = {"api_key": made["api_key"], "site_id": other["site_id"], "pathname": "/o"}
    crossed = {**theirs, "site_id": good["site_id"]}  # their key, our site
    unknown = {**good, "api_key": "rb_" + "0" * 32}
    items = [good, theirs, crossed, good, {**good, "site_id": "999"}, unknown, theirs, crossed]
    body = batch(client, items).get_json()
    outcomes = [r.get("error", "ok") for r in body["results"]]
    assert outcomes == ["ok", "ok", "Invalid API key", "ok", "Site not found"] + [
        "Invalid API key",
        "ok",
        "Invalid API key",
    ]
    by_path: dict[str, set[str]] = {}
    for event in stored_events():
        by_path.setdefault(event["pathname"], set()).add(event["api_key_id"])
    assert len(by_path["/p"]) == 1 and by_path["/o"] == {made["id"]}
    assert made["id"] not in by_path["/p"]
    assert len(stored_events()) == 4


def test_repeated_event_ids_are_stored_once(
    client: FlaskClient, good: dict[str, Any], stored_events: Any
) -> None:
    items = [{**good, "event_id": "a"}, {**good, "event_id": "a"}, {**good, "event_id": "b"}]
    assert batch(client, items).get_json()["accepted"] == 3
    assert batch(client, items).get_json()["accepted"] == 3, "a retried batch is acknowledged again"
    assert sorted(e["event_id"] for e in stored_events()) == ["a", "b"]


def test_filtered_items_say_why(
    app: Flask, client: FlaskClient, good: dict[str, Any], stored_events: Any
) -> None:
    with app.app_context():
        sites.update_site(
            get_store(), good["site_id"], {"settings": {"excluded_ips": ["192.0.2.0/24"]}}
        )
    body = batch(client, [{**good, "ip_address": "192.0.2.9"}, good]).get_json()
    assert body["results"][0] == {
        "index": 0,
        "success": True,
        "message": "Event not tracked - IP excluded",
    }
    assert len(stored_events()) == 1


def test_each_site_s_settings_apply_to_its_own_items(
    app: Flask, client: FlaskClient, good: dict[str, Any], stored_events: Any
) -> None:
    """Settings are read once per site in a batch: one site's exclusions and IP policy do
    not leak to another's items, before or after enrichment."""
    with app.app_context():
        sites.update_site(
            get_store(),
            good["site_id"],
            {"settings": {"excluded_ips": ["192.0.2.0/24"], "track_ip": True}},
        )
        other = sites.create_site(get_store(), name="o", domain="o.example")
        key = keys.create_key(get_store(), other["site_id"])["api_key"]
    theirs = {"api_key": key, "site_id": other["site_id"], "pathname": "/o"}
    items = [
        {**good, "ip_address": "192.0.2.9"},
        {**theirs, "ip_address": "192.0.2.9"},
        {**good, "ip_address": "198.51.100.7"},
        {**theirs, "ip_address": "198.51.100.7"},
    ]
    body = batch(client, items).get_json()
    assert [r.get("message") for r in body["results"]] == [
        "Event not tracked - IP excluded",
        None,
        None,
        None,
    ]
    kept = sorted((e["pathname"], e.get("ip_address")) for e in stored_events())
    assert kept == [("/o", None), ("/o", None), ("/p", "198.51.100.7")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"event": []}, "Expected an array of events, received object"),
        ("x", "Expected an array of events, received string"),
        ([], "A batch needs at least one event"),
    ],
)
def test_unusable_batches_are_400(client: FlaskClient, body: Any, message: str) -> None:
    response = batch(client, body)
    assert response.status_code == 400
    assert response.get_json()["details"]["formErrors"] == [message]


def test_at_most_500_events(client: FlaskClient, good: dict[str, Any], stored_events: Any) -> None:
    response = batch(client, [{"site_id": "1"}] * 501)
    assert response.status_code == 400
    assert response.get_json()["details"]["formErrors"] == ["At most 500 events per batch, got 501"]
    assert stored_events() == []


def test_size_cap_is_512_kb_compressed_or_not(client: FlaskClient, good: dict[str, Any]) -> None:
    items = [{**good, "page_title": "t" * 500}] * 500
    raw = json.dumps(items).encode()
    assert 64 * 1024 < len(raw) < 512 * 1024 * 1.2
    small = json.dumps(items[:400]).encode()
    assert batch(client, None, data=small, content_type="application/json").status_code == 200
    huge = json.dumps([{**good, "page_title": "t" * 512}] * 1100).encode()
    assert len(huge) > 512 * 1024
    response = client.post(
        "/api/track/batch",
        data=gzip.compress(huge),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 413


def test_a_batch_spends_one_request_of_each_keys_budget(
    instance_path: Any, app_config: dict[str, Any]
) -> None:
    from rybbit import create_app

    app = create_app({**app_config, "RATE_LIMIT": "2 per minute"})
    with app.app_context():
        site = sites.create_site(get_store(), name="r", domain="r.example")
        key = keys.create_key(get_store(), site["site_id"])["api_key"]
    client = app.test_client()
    item = {"api_key": key, "site_id": site["site_id"]}
    assert batch(client, [item] * 50).get_json()["accepted"] == 50
    assert client.post("/api/track", json=item).status_code == 200
    body = batch(client, [item] * 3).get_json()
    assert body["rejected"] == 3
    assert (
        body["results"][0]["error"]
        == "Rate limit exceeded. Maximum 2 requests per minute per API key."
    )


class _Batched(Enricher):
    """An enricher that serves a whole batch in one call (or fails doing so)."""

    name = "batched"

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[int] = []

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        self.enrich_many([event], [context])

    def enrich_many(self, events: Any, contexts: Any) -> None:
        self.calls.append(len(events))
        if self.fail:
            raise RuntimeError("boom")
        for n, event in enumerate(events):
            event["batch_position"] = n


@pytest.mark.parametrize("fail", [False, True])
def test_a_batch_is_enriched_in_one_call_and_a_failing_call_spares_the_events(
    app: Flask, client: FlaskClient, good: dict[str, Any], stored_events: Any, fail: bool
) -> None:
    from rybbit.plugin_loader import RUNNER_KEY

    enricher = _Batched(fail)
    runner = app.extensions[RUNNER_KEY]
    runner.add(enricher)
    items = [
        {**good, "pathname": "/w"},
        {"bad": 1},
        {**good, "pathname": "/x"},
        {**good, "pathname": "/y"},
    ]
    body = batch(client, items).get_json()
    assert body["accepted"] == 3 and body["rejected"] == 1
    assert enricher.calls == [3], "one call for the batch's three accepted events"
    events = stored_events()
    assert len(events) == 3
    if fail:
        assert all("batch_position" not in e for e in events)
        assert runner.failures["batched"] == 3
    else:
        assert sorted(e["batch_position"] for e in events) == [0, 1, 2]

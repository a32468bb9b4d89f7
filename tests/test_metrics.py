"""GET /metrics: counts after real traffic, in one process and across two gunicorn workers."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from rybbit import create_app, metrics, sites
from rybbit.store import MongoStorage, StoreUnavailable, get_store
from tests.conftest import add_enricher, free_port
from tests.geo_db import build_city_db
from tests.gunicorn_service import run_service

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture
def store_kind() -> str:
    # Metrics do not depend on the store; the store-failure test needs the embedded one.
    return "embedded"


@pytest.fixture
def app(instance_path: Path, app_config: dict[str, Any]) -> Flask:
    instance_path.mkdir(parents=True, exist_ok=True)
    build_city_db(instance_path / "GeoLite2-City.mmdb")  # for country exclusion
    return create_app(app_config)


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return parse(response.get_data(as_text=True))


def changes(before: Samples, after: Samples, name: str) -> dict[tuple[str, ...], float]:
    """How much each series of ``name`` grew, by its label values (in label-name order)."""
    grown = {}
    for (sample, labels), value in after.items():
        if sample == name and value != before.get((sample, labels), 0.0):
            grown[tuple(v for _, v in labels)] = value - before.get((sample, labels), 0.0)
    return grown


def events(before: Samples, after: Samples) -> dict[tuple[str, ...], float]:
    """rybbit_events_total growth by (outcome, reason, site_id, type)."""
    return changes(before, after, "rybbit_events_total")


def test_each_event_outcome_is_counted_by_type_site_and_reason(
    app: Flask, client: FlaskClient, site: dict[str, Any], post: Any
) -> None:
    with app.app_context():
        settings = {"excluded_ips": ["10.1.0.0/16"], "excluded_countries": ["GB"]}
        sites.update_site(get_store(), site["site_id"], {"settings": settings})
    before = scrape(client)

    assert post().status_code == 200
    assert post(pathname="/two").status_code == 200
    assert post(type="custom_event", event_name="buy").status_code == 200
    assert post(ip_address="10.1.2.3").get_json()["message"] == "Event not tracked - IP excluded"
    assert post(user_agent=BOT).get_json() == {"success": True}  # keyed: stored, flagged
    assert post(ip_address="81.2.69.1").get_json()["message"] == (
        "Event not tracked - country excluded"
    )
    assert post(type="nonsense").status_code == 400
    assert post(site_id="999").status_code == 404
    assert post(api_key="rb_" + "0" * 32).status_code == 403
    too_large = client.post(
        "/api/track", data="x" * (1024 * 1024 + 1), headers={"Content-Type": "application/json"}
    )
    assert too_large.status_code == 413
    assert client.options("/api/track").status_code == 200  # a preflight is no event

    assert events(before, scrape(client)) == {
        ("accepted", "none", "1", "pageview"): 3,
        ("accepted", "none", "1", "custom_event"): 1,
        ("filtered", "ip_excluded", "1", "pageview"): 1,
        ("filtered", "country_excluded", "1", "pageview"): 1,
        ("rejected", "invalid", "", "unknown"): 1,
        ("rejected", "site_not_found", "", "pageview"): 1,
        ("rejected", "invalid_key", "", "pageview"): 1,
        ("rejected", "too_large", "", "unknown"): 1,
    }


def test_batch_items_are_counted_one_by_one(
    client: FlaskClient, site: dict[str, Any], api_key: str
) -> None:
    good = {"api_key": api_key, "site_id": site["site_id"]}
    before = scrape(client)
    response = client.post(
        "/api/track/batch",
        json=[
            good,
            {**good, "type": "outbound", "properties": '{"url": "https://x.example"}'},
            {**good, "user_agent": BOT},
            {**good, "pathname": 5},
            {**good, "api_key": "rb_" + "1" * 32},
            "not an object",
        ],
    )
    assert response.get_json()["accepted"] == 3 and response.get_json()["rejected"] == 3
    assert events(before, scrape(client)) == {
        ("accepted", "none", "1", "pageview"): 2,
        ("accepted", "none", "1", "outbound"): 1,
        ("rejected", "invalid", "", "unknown"): 2,
        ("rejected", "invalid_key", "", "pageview"): 1,
    }


class TestRateLimited:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"TESTING": True, "MONGO_URI": None, "LOAD_PLUGINS": [], "RATE_LIMIT": "2/minute"}

    def test_refused_requests_and_their_events_are_counted(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, post: Any
    ) -> None:
        before = scrape(client)
        assert [post().status_code for _ in range(3)] == [200, 200, 429]
        body = {"api_key": api_key, "site_id": site["site_id"]}
        batch = client.post("/api/track/batch", json=[body, body]).get_json()
        assert [r.get("error", "")[:19] for r in batch["results"]] == ["Rate limit exceeded"] * 2
        after = scrape(client)
        assert events(before, after) == {
            ("accepted", "none", "1", "pageview"): 2,
            ("rejected", "rate_limited", "1", "pageview"): 3,
        }
        # Requests, not events: the batch was refused once, for its one key.
        assert changes(before, after, "rybbit_rate_limited_total") == {("1",): 2}


def test_request_durations_by_method_route_and_status(
    client: FlaskClient, post: Any, site: dict[str, Any]
) -> None:
    before = scrape(client)
    for _ in range(3):
        post()
    client.get("/no/such/page/123")
    client.open("/api/track", method="BREW")
    client.get(f"/api/admin/sites/{site['site_id']}")  # admin API disabled: 403
    grown = changes(before, scrape(client), "rybbit_request_duration_seconds_count")
    assert grown == {
        ("POST", "/api/track", "200"): 3,
        ("GET", "unmatched", "404"): 1,  # never the raw path
        ("other", "unmatched", "405"): 1,  # nor an arbitrary method
        ("GET", "/api/admin/sites/<site_id>", "403"): 1,
        ("GET", "/metrics", "200"): 1,  # the first scrape
    }


def test_enrichers_time_and_failures(app: Flask, client: FlaskClient, post: Any) -> None:
    def explode(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    add_enricher(app, "exploding", explode)
    before = scrape(client)
    assert [post().status_code for _ in range(4)] == [200] * 4
    after = scrape(client)
    assert changes(before, after, "rybbit_enriched_events_total") == {(): 4}
    assert changes(before, after, "rybbit_enricher_failures_total") == {("exploding",): 4}
    spent = changes(before, after, "rybbit_enricher_seconds_total")
    names = {e.name for e in app.extensions["rybbit.enrichment"].enrichers}
    assert {"geo", "device", "sessions", "exploding"} <= names
    assert set(spent) == {(name,) for name in names} and all(s > 0 for s in spent.values())
    assert sum(spent.values()) < 4  # seconds, not nanoseconds or milliseconds


def test_store_writes_are_timed_and_their_failures_counted(
    app: Flask, client: FlaskClient, post: Any, site: dict[str, Any], api_key: str
) -> None:
    before = scrape(client)
    assert post().status_code == 200
    after_ok = scrape(client)
    assert changes(before, after_ok, "rybbit_store_write_duration_seconds_count") == {(): 1}
    # A real failing write: the events table goes away under the embedded store.
    events_file = Path(app.instance_path) / "data" / "rybbit.sqlite3"
    with sqlite3.connect(events_file) as con:
        con.execute("ALTER TABLE events RENAME TO elsewhere")
    assert post().status_code == 503
    body = {"api_key": api_key, "site_id": site["site_id"]}
    batch = client.post("/api/track/batch", json=[body, body, {**body, "user_agent": BOT}])
    assert batch.status_code == 503
    after = scrape(client)
    assert events(after_ok, after) == {
        # Judged acceptable, then the write failed: the client was told 503, so rejected.
        ("rejected", "store_unavailable", "1", "pageview"): 4,
    }
    assert changes(after_ok, after, "rybbit_store_write_errors_total") == {("OperationalError",): 2}
    assert changes(after_ok, after, "rybbit_store_write_duration_seconds_count") == {(): 2}


def test_unreachable_mongodb_write_is_counted_by_driver_error(instance_path: Path) -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=200
    )
    store = MongoStorage(client["nowhere"])
    app = create_app({"MONGO_URI": None, "LOAD_PLUGINS": []})
    before = scrape(app.test_client())
    with pytest.raises(StoreUnavailable):
        store.insert_events([{"_id": "e1"}])
    store.insert_events([])  # nothing to write: not a write
    after = scrape(app.test_client())
    assert changes(before, after, "rybbit_store_write_errors_total") == {
        ("ServerSelectionTimeoutError",): 1
    }
    assert changes(before, after, "rybbit_store_write_duration_seconds_count") == {(): 1}


class TestAccess:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"MONGO_URI": None, "LOAD_PLUGINS": [], "METRICS_TOKEN": "scrape-token-0123456789"}

    def test_token_required_when_set(self, client: FlaskClient) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.get_json() == {"success": False, "error": "Unauthorized"}
            assert refused.headers["WWW-Authenticate"].lower().startswith("bearer")
        allowed = client.get(
            "/metrics",
            headers={
                "Authorization": "Bearer scrape-token-0123456789",
                "Accept": "application/openmetrics-text",
            },
        )
        assert allowed.status_code == 200
        assert allowed.content_type.startswith("application/openmetrics-text")
        assert "rybbit_events_total" in allowed.get_data(as_text=True)

    def test_token_from_the_environment_is_text(
        self, instance_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RYBBIT_METRICS_TOKEN", "0001234567890123")  # JSON would make a number
        app = create_app({"MONGO_URI": None, "LOAD_PLUGINS": []})
        response = app.test_client().get(
            "/metrics", headers={"Authorization": "Bearer 0001234567890123"}
        )
        assert response.status_code == 200


def test_disabled_metrics_are_neither_served_nor_recorded(instance_path: Path) -> None:
    on = create_app({"MONGO_URI": None, "LOAD_PLUGINS": []}).test_client()
    off = create_app({"MONGO_URI": None, "LOAD_PLUGINS": [], "METRICS_ENABLED": False})
    before = scrape(on)
    assert off.test_client().get("/metrics").status_code == 404
    assert off.test_client().get("/healthz").status_code == 200
    grown = changes(before, scrape(on), "rybbit_request_duration_seconds_count")
    assert grown == {("GET", "/metrics", "200"): 1}  # only the scrape of the enabled app


def test_totals_across_two_gunicorn_workers(tmp_path: Path) -> None:
    """Whichever worker answers a scrape, it reports what every worker counted."""
    with run_service(tmp_path, None, workers=2, RYBBIT_RATE_LIMIT="off") as service:
        site = service.admin("POST", "/sites", {"name": "M", "domain": "m.example"})
        key = service.admin("POST", f"/sites/{site['site_id']}/api-keys", {})
        accepted = service.track_many(key, count=60)
        refused = service.track_many({**key, "api_key": "rb_" + "2" * 32}, count=10)
        assert [r.status_code for r in accepted] == [200] * 60
        assert [r.status_code for r in refused] == [403] * 10
        assert len(service.worker_pids(200)) == 2, "both workers took events"

        # Each worker publishes its enrichment sums once a second (metrics.py).
        time.sleep(metrics.ENRICHMENT_PUBLISH_SECONDS + 0.5)
        scrapes = []
        for _ in range(8):  # fresh connections: either worker may answer each
            response = requests.get(f"{service.base_url}/metrics", timeout=10)
            assert response.status_code == 200
            scrapes.append(parse(response.text))
    for samples in scrapes:
        sid = site["site_id"]
        series = {
            labels: value
            for (name, labels), value in samples.items()
            if name == "rybbit_events_total"
        }
        assert series == {
            (
                ("outcome", "accepted"),
                ("reason", "none"),
                ("site_id", sid),
                ("type", "pageview"),
            ): 60,
            (
                ("outcome", "rejected"),
                ("reason", "invalid_key"),
                ("site_id", ""),
                ("type", "pageview"),
            ): 10,
            # run_service's readiness probe: an empty body.
            (
                ("outcome", "rejected"),
                ("reason", "invalid"),
                ("site_id", ""),
                ("type", "unknown"),
            ): 1,
        }
        post_200 = (("method", "POST"), ("route", "/api/track"), ("status", "200"))
        assert samples[("rybbit_request_duration_seconds_count", post_200)] == 60
        assert samples[("rybbit_enriched_events_total", ())] == 60
        writes = samples[("rybbit_store_write_duration_seconds_count", ())]
        assert 1 <= writes <= 60  # concurrent requests may share a write (group commit)

"""A deleted site ends with no events, although other processes accept events for it until
their cached copy of the site expires."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from rybbit import admin, create_app
from rybbit.store import get_store

TOKEN = "site-deletion-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "ADMIN_TOKEN": TOKEN, "RATE_LIMIT": "off"}


@pytest.fixture
def other_worker(app_config: dict[str, Any], app: Flask) -> Flask:
    """A second app on the same store, like another gunicorn worker, caching sites for a
    minute."""
    return create_app({**app_config, "AUTH_CACHE_SECONDS": 60})


def _event_count(app: Flask, site_id: str) -> int:
    with app.app_context():
        return get_store().count_events(site_id)


def _late_event(other: Flask, site: dict[str, Any], api_key: str, path: str) -> None:
    """An event accepted by the other worker, which still has the site and key cached."""
    body = {"api_key": api_key, "site_id": site["site_id"], "pathname": path}
    assert other.test_client().post("/api/track", json=body).status_code == 200


@pytest.mark.ack_store
def test_events_accepted_after_the_delete_are_purged_on_their_own(
    app: Flask,
    other_worker: Flask,
    site: dict[str, Any],
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin, "REQUEST_TIME_BOUND_SECONDS", 0.5)
    app.config["AUTH_CACHE_SECONDS"] = 0.5  # the bound the deleting process waits out
    _late_event(other_worker, site, api_key, "/before")  # warms the other worker's cache
    response = app.test_client().delete(f"/api/admin/sites/{site['site_id']}", headers=ADMIN)
    assert response.get_json() == {"success": True, "site_id": site["site_id"], "events_deleted": 1}
    _late_event(other_worker, site, api_key, "/after")
    assert _event_count(app, site["site_id"]) == 1  # a leftover, for now
    deadline = time.monotonic() + 10
    while _event_count(app, site["site_id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _event_count(app, site["site_id"]) == 0


@pytest.mark.ack_store
def test_admin_api_shows_and_purges_leftovers(
    app: Flask,
    other_worker: Flask,
    site: dict[str, Any],
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin, "REQUEST_TIME_BOUND_SECONDS", 3600)  # as if the process died
    client = app.test_client()
    _late_event(other_worker, site, api_key, "/before")
    assert client.delete(f"/api/admin/sites/{site['site_id']}", headers=ADMIN).status_code == 200
    _late_event(other_worker, site, api_key, "/after-1")
    _late_event(other_worker, site, api_key, "/after-2")

    listed = client.get("/api/admin/deleted-sites", headers=ADMIN).get_json()["sites"]
    assert [(s["site_id"], s["events"]) for s in listed] == [(site["site_id"], 2)]
    assert listed[0]["deleted_at"]

    again = client.delete(f"/api/admin/sites/{site['site_id']}", headers=ADMIN)
    assert again.status_code == 200
    assert again.get_json()["events_deleted"] == 2
    assert _event_count(app, site["site_id"]) == 0
    listed = client.get("/api/admin/deleted-sites", headers=ADMIN).get_json()["sites"]
    assert [(s["site_id"], s["events"]) for s in listed] == [(site["site_id"], 0)]
    # The site stays deleted: not listed, not found, and its id is never handed out again.
    assert client.get(f"/api/admin/sites/{site['site_id']}", headers=ADMIN).status_code == 404
    assert client.get("/api/admin/sites", headers=ADMIN).get_json()["sites"] == []


def test_deleting_an_unknown_site_is_still_404(app: Flask) -> None:
    response = app.test_client().delete("/api/admin/sites/999", headers=ADMIN)
    assert response.status_code == 404
    assert response.get_json() == {"success": False, "error": "Site not found"}

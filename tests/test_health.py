"""/healthz and /readyz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from rybbit import create_app, delivery
from tests.conftest import free_port
from tests.geo_db import build_city_db


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_ready_with_store_and_geo(instance_path: Path, app_config: dict[str, Any]) -> None:
    instance_path.mkdir(parents=True, exist_ok=True)
    build_city_db(instance_path / "GeoLite2-City.mmdb")
    response = create_app(app_config).test_client().get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    spool = body["checks"].pop("spool", None)  # with MongoDB: this worker's backlog
    assert body == {"success": True, "status": "ready", "checks": {"store": "ok"}}
    if app_config["MONGO_URI"]:
        assert spool is not None and spool["backlog_events"] == 0


def test_geo_without_database_is_not_ready_unless_disabled(
    instance_path: Path, app_config: dict[str, Any]
) -> None:
    response = create_app(app_config).test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["success"] is False and body["error"] == "Not ready"
    assert "no database at" in body["checks"]["geo"]
    disabled = create_app({**app_config, "PLUGINS_DISABLED": ["geo"]}).test_client().get("/readyz")
    assert disabled.status_code == 200


@pytest.mark.parametrize("ack, ready", [("store", 503), ("spool", 200)])
def test_unreachable_store_is_not_ready_unless_events_are_spooled(
    instance_path: Path, monkeypatch: pytest.MonkeyPatch, ack: str, ready: int
) -> None:
    """ACK=store answers only once MongoDB has the event, so it is not ready without it;
    ACK=spool keeps accepting into the spool (shipped when MongoDB is back), so it is."""
    monkeypatch.setenv("RYBBIT_ACK", ack)
    app = create_app(
        {
            "MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/x",
            "MONGO_TIMEOUT_MS": 300,
            "PLUGINS_DISABLED": ["geo"],
        }
    )
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == ready
        checks = response.get_json()["checks"]
        assert checks["store"].startswith("store unavailable")
        assert ("spool" in checks) == (ack == "spool")
        assert app.test_client().get("/healthz").status_code == 200
    finally:
        delivery.close(app)

"""The ``flask --app app`` commands the README and end-to-end tests use."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask


def invoke(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result


def test_create_site_then_key_then_track_then_export(app: Flask) -> None:
    site = json.loads(
        invoke(app, "sites", "create", "--name", "Shop", "--domain", "shop.example").output
    )
    assert site["site_id"] == "1" and site["name"] == "Shop" and site["domain"] == "shop.example"
    key = json.loads(invoke(app, "keys", "create", site["site_id"], "--name", "server").output)
    assert key["api_key"].startswith("rb_") and len(key["api_key"]) == 35
    assert key["prefix"] == key["api_key"][:11]

    client = app.test_client()
    for path in ("/first", "/second", "/third"):
        response = client.post(
            "/api/track", json={"api_key": key["api_key"], "site_id": "1", "pathname": path}
        )
        assert response.status_code == 200

    lines = invoke(app, "events", "export", site["site_id"]).output.splitlines()
    exported = [json.loads(line) for line in lines]
    assert [e["pathname"] for e in exported] == ["/first", "/second", "/third"]
    assert all(e["timestamp"].endswith("Z") and e["id"] for e in exported)
    assert key["api_key"] not in "\n".join(lines)


def test_export_is_per_site(app: Flask) -> None:
    one = json.loads(invoke(app, "sites", "create", "--name", "A", "--domain", "a.example").output)
    two = json.loads(invoke(app, "sites", "create", "--name", "B", "--domain", "b.example").output)
    key = json.loads(invoke(app, "keys", "create", one["site_id"]).output)["api_key"]
    app.test_client().post("/api/track", json={"api_key": key, "site_id": one["site_id"]})
    assert invoke(app, "events", "export", two["site_id"]).output == ""
    assert len(invoke(app, "events", "export", one["site_id"]).output.splitlines()) == 1


def test_key_for_unknown_site_fails_clearly(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["keys", "create", "77"])
    assert result.exit_code != 0
    assert "site 77 not found" in result.output

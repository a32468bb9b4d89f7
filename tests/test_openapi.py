"""The served OpenAPI document is valid and describes exactly the routes the app has."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from rybbit import create_app
from rybbit.browser import IdentifySchema
from rybbit.openapi import TrackingConfig
from rybbit.schemas import BrowserTrackEventSchema, TrackEventSchema


@pytest.fixture
def document(instance_path: Any) -> dict[str, Any]:
    app = create_app({"MONGO_URI": None})
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200
    return dict(response.get_json())


def _routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((path, method.lower()))
    return found


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")


def test_document_lists_exactly_the_real_routes(
    document: dict[str, Any], instance_path: Any
) -> None:
    documented = {
        (path, method)
        for path, operations in document["paths"].items()
        for method in operations
        if method != "parameters"
    }
    assert documented == _routes(create_app({"MONGO_URI": None}))


def test_track_schema_matches_the_validator(document: dict[str, Any]) -> None:
    described = document["components"]["schemas"]["TrackEventSchema"]
    assert set(described["properties"]) == set(TrackEventSchema().fields)
    assert described["additionalProperties"] is False
    assert set(described["required"]) == {"api_key", "site_id"}
    assert described["properties"]["page_title"]["maxLength"] == 512
    assert described["properties"]["screenWidth"]["type"] == "integer"


def test_admin_operations_require_the_token(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            is_admin = path.startswith("/api/admin")
            assert (operation.get("security") == [{"adminToken": []}]) is is_admin, (path, method)


def test_browser_routes_are_described_with_their_validators(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    browser = schemas["BrowserTrackEventSchema"]
    assert set(browser["properties"]) == set(BrowserTrackEventSchema().fields)
    assert set(browser["required"]) == {"site_id"}  # the key is optional: keyless events
    track = document["paths"]["/api/track"]["post"]
    assert track["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BrowserTrackEventSchema"
    }
    assert "403" in track["responses"] and "429" in track["responses"]
    identify = schemas["IdentifySchema"]
    assert set(identify["properties"]) == set(IdentifySchema().fields)
    assert identify["properties"]["traits"]["type"] == "object"
    config = schemas["TrackingConfig"]
    assert set(config["required"]) == set(TrackingConfig().fields)
    assert {"trackInitialPageView", "webVitals", "sessionReplay"} <= set(config["required"])


def test_stats_query_is_described_with_its_validator(document: dict[str, Any]) -> None:
    from rybbit.stats.query_schema import METRICS, QuerySchema

    operation = document["paths"]["/api/v2/query"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/QuerySchema"
    }
    assert operation["security"] == [{"statsKey": []}, {"adminToken": []}]
    described = document["components"]["schemas"]["QuerySchema"]
    assert set(described["properties"]) == set(QuerySchema().fields)
    assert described["properties"]["metrics"]["items"]["enum"] == list(METRICS)
    assert set(described["required"]) == {"site_id", "metrics", "date_range"}
    key = document["components"]["schemas"]["ApiKey"]
    assert "scopes" in key["required"]

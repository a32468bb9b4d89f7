"""Hostile and odd input: compressed bodies, CORS, and property-based fuzzing of the contract."""

from __future__ import annotations

import gzip
import json
import string
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rybbit import create_app, keys, sites
from rybbit.schemas import TrackEventSchema
from rybbit.store import get_store

ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdefghij"
JSON = {"Content-Type": "application/json"}


def assert_contract_error(response: Any) -> None:
    """Every error body is JSON with success=false and an error string; never a 5xx."""
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        body = response.get_json()
        assert body["success"] is False and isinstance(body["error"], str)
        if response.status_code == 400:
            assert set(body["details"]) == {"fieldErrors", "formErrors"}


class TestGzip:
    def test_gzip_body_is_accepted(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
    ) -> None:
        body = json.dumps(
            {"api_key": api_key, "site_id": site["site_id"], "pathname": "/gz"}
        ).encode()
        response = client.post(
            "/api/track", data=gzip.compress(body), headers={**JSON, "Content-Encoding": "gzip"}
        )
        assert response.status_code == 200
        assert stored_events()[0]["pathname"] == "/gz"

    def test_decompression_bomb_is_413(self, client: FlaskClient, stored_events: Any) -> None:
        bomb = gzip.compress(b'{"a": "' + b"x" * 50_000_000 + b'"}')
        assert len(bomb) < 64 * 1024
        response = client.post(
            "/api/track", data=bomb, headers={**JSON, "Content-Encoding": "gzip"}
        )
        assert response.status_code == 413
        assert response.get_json() == {"success": False, "error": "Payload too large"}

    @pytest.mark.parametrize(
        "data", [b"not gzip", gzip.compress(b"{}")[:-6], gzip.compress(b"{}") + b"junk"]
    )
    def test_broken_gzip_is_400(self, client: FlaskClient, data: bytes) -> None:
        response = client.post(
            "/api/track", data=data, headers={**JSON, "Content-Encoding": "gzip"}
        )
        assert response.status_code == 400
        assert response.get_json()["details"]["formErrors"] == ["Malformed gzip body"]

    def test_unknown_encoding_is_415(self, client: FlaskClient) -> None:
        response = client.post("/api/track", data=b"{}", headers={**JSON, "Content-Encoding": "br"})
        assert response.status_code == 415 and response.get_json()["success"] is False


class TestCors:
    def test_preflight_is_open(self, client: FlaskClient) -> None:
        response = client.options(
            "/api/track",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://shop.example")
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()

    def test_track_responses_carry_cors_headers(self, client: FlaskClient) -> None:
        response = client.post("/api/track", json={}, headers={"Origin": "https://shop.example"})
        assert response.status_code == 400
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://shop.example")

    def test_admin_api_stays_closed(self, instance_path: Any) -> None:
        app = create_app({"MONGO_URI": None, "ADMIN_TOKEN": ADMIN_TOKEN})
        client = app.test_client()
        origin = {"Origin": "https://evil.example"}
        preflight = client.options(
            "/api/admin/sites", headers={**origin, "Access-Control-Request-Method": "GET"}
        )
        real = client.get(
            "/api/admin/sites", headers={**origin, "Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert real.status_code == 200
        for response in (preflight, real):
            assert "Access-Control-Allow-Origin" not in response.headers


class TestOddValues:
    @pytest.mark.parametrize(
        "text", ["nul\x00inside", "\x01\x02\x1f", "tab\tnew\nline", "emoji \U0001f600", "\u202e"]
    )
    def test_control_and_unicode_characters_are_stored_as_sent(
        self, post: Any, stored_events: Any, text: str
    ) -> None:
        assert post(page_title=text).status_code == 200
        assert stored_events()[0]["page_title"] == text

    @pytest.mark.parametrize(
        "body",
        [
            b'{"screenWidth": 1' + b"0" * 5000 + b"}",
            b'{"lcp": 1e999}',
            b'{"a":' * 3000 + b"1" + b"}" * 3000,
        ],
    )
    def test_extreme_numbers_and_nesting_are_400(self, client: FlaskClient, body: bytes) -> None:
        response = client.post("/api/track", data=body, headers=JSON)
        assert response.status_code == 400
        assert_contract_error(response)

    def test_huge_integer_in_properties_is_kept(self, post: Any, stored_events: Any) -> None:
        assert (
            post(
                type="custom_event", event_name="e", properties='{"n": -99999999999999999999999}'
            ).status_code
            == 200
        )
        assert stored_events()[0]["properties"]["n"] == -1e23


# --- property-based fuzzing -------------------------------------------------------------

FIELDS = sorted(TrackEventSchema().fields)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["pageview", "custom_event", "performance", "outbound", "error"]),
    st.just('{"url": "https://x.example", "message": "m"}'),
    st.text(alphabet=string.printable, max_size=3000),
)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> tuple[Flask, dict[str, str]]:
    """One app for all fuzz examples (rate limit off), with a real site and key."""
    import os

    os.environ["RYBBIT_INSTANCE_PATH"] = str(tmp_path_factory.mktemp("fuzz"))
    try:
        app = create_app({"MONGO_URI": None, "RATE_LIMIT": "off", "ADMIN_TOKEN": ADMIN_TOKEN})
    finally:
        del os.environ["RYBBIT_INSTANCE_PATH"]
    with app.app_context():
        site = sites.create_site(get_store(), name="fuzz", domain="fuzz.example")
        key = keys.create_key(get_store(), site["site_id"])
    return app, {"api_key": key["api_key"], "site_id": site["site_id"]}


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.dictionaries(st.sampled_from([*FIELDS, "foo", "$where"]), field_values, max_size=8),
    keep_credentials=st.booleans(),
)
def test_any_payload_gets_a_contract_answer(
    fuzz_app: tuple[Flask, dict[str, str]], extra: dict[str, Any], keep_credentials: bool
) -> None:
    app, credentials = fuzz_app
    body = {**credentials, **extra} if keep_credentials else extra
    response = app.test_client().post("/api/track", json=body)
    assert response.status_code in (200, 400, 403, 404), response.get_data(as_text=True)
    assert_contract_error(response)
    if response.status_code == 200:
        assert response.get_json() == {"success": True}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_any_bytes_get_a_contract_answer(
    fuzz_app: tuple[Flask, dict[str, str]], data: bytes
) -> None:
    response = fuzz_app[0].test_client().post("/api/track", data=data, headers=JSON)
    assert response.status_code in (400, 403, 404), response.get_data(as_text=True)
    assert_contract_error(response)


def _openapi_operations() -> list[Any]:
    app = create_app({"MONGO_URI": None})  # only to read the document; no store is opened
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize(
    "operation", _openapi_operations(), ids=lambda op: f"{op.method} {op.path}"
)
def test_openapi_operations_never_fail(
    fuzz_app: tuple[Flask, dict[str, str]], operation: Any
) -> None:
    """schemathesis generates input for every documented operation from the served document."""
    app = fuzz_app[0]

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call(app=app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        # /readyz answers 503 by design here: the fuzzing app has no GeoIP database.
        limit = 504 if case.formatted_path == "/readyz" else 500
        assert response.status_code < limit, (case.method, case.formatted_path, response.text)
        if response.status_code >= 400:
            body = response.json()
            assert body["success"] is False and isinstance(body["error"], str)

    run()


class TestReviewRegressions:
    @pytest.mark.parametrize(
        "props", ['{"a": "\\ud800"}', '{"\\udc80": 1}', '{"a": 1e999}', '{"a": [-1e400]}']
    )
    def test_unstorable_properties_are_400(self, post: Any, stored_events: Any, props: str) -> None:
        response = post(type="custom_event", event_name="e", properties=props)
        assert response.status_code == 400
        assert response.get_json()["details"]["fieldErrors"]["properties"] == [
            "Properties must be a valid JSON string"
        ]
        assert stored_events() == []

    def test_accepted_events_carry_no_retry_after(self, post: Any) -> None:
        response = post()
        assert response.status_code == 200 and "Retry-After" not in response.headers

    def test_duplicate_ids_are_one_error_on_both_stores(self, app: Flask) -> None:
        from rybbit.store import DuplicateKey

        with app.app_context():
            store = get_store()
            doc = {"_id": "dup", "seq": 0, "deleted_at": None}
            store.insert_site(dict(doc))
            with pytest.raises(DuplicateKey):
                store.insert_site(dict(doc))

    def test_salted_user_ids_never_reach_session_state(
        self, app: Flask, post: Any, site: dict[str, Any]
    ) -> None:
        with app.app_context():
            sites.update_site(get_store(), site["site_id"], {"settings": {"salt_user_ids": True}})
        assert post(user_id="alice@example.com").status_code == 200
        with app.app_context():
            state = json.dumps(get_store().list_sessions(), default=str)
        assert "alice@example.com" not in state

    def test_admin_token_from_the_environment_stays_text(
        self, instance_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("RYBBIT_ADMIN_TOKEN", "00012345678901234567890123456789")
        app = create_app({"MONGO_URI": None})
        response = app.test_client().get(
            "/api/admin/sites", headers={"Authorization": "Bearer 00012345678901234567890123456789"}
        )
        assert response.status_code == 200

"""Input at the edges of what Python, BSON and the stores can represent: never a 500.

Regression tests for the cases an attack review found, then property tests (Hypothesis) that
throw extreme dates, numbers, cursors, addresses and settings at every endpoint that converts
input: /api/track, /api/track/batch and the admin routes, on both stores.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta, timezone
from typing import Any

import pymongo
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rybbit import create_app, keys, sites
from rybbit.store import get_store
from tests.conftest import STORES

ADMIN_TOKEN = "bad-input-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def assert_contract_answer(response: Any) -> None:
    """Not a 5xx, and any error in the contract's shape."""
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        body = response.get_json()
        assert body["success"] is False and isinstance(body["error"], str), body
        if response.status_code == 400:
            assert set(body["details"]) == {"fieldErrors", "formErrors"}, body


class TestRegressions:
    @pytest.mark.parametrize(
        "timestamp",
        [
            "9999-12-31T23:59:59-14:00",  # past year 9999 once in UTC
            "0001-01-01T00:00:00+14:00",  # before year 1 once in UTC
            10**400,  # epoch milliseconds beyond a float
        ],
    )
    def test_timestamp_out_of_range_is_400(
        self, post: Any, stored_events: Any, timestamp: Any
    ) -> None:
        response = post(timestamp=timestamp)
        assert response.status_code == 400
        assert response.get_json()["details"]["fieldErrors"] == {
            "timestamp": ["Invalid timestamp: use ISO 8601 or epoch milliseconds"]
        }
        assert stored_events() == []

    def test_timestamp_out_of_range_is_400_before_the_key_is_checked(
        self, client: FlaskClient
    ) -> None:
        response = client.post(
            "/api/track",
            json={"api_key": "x", "site_id": "1", "timestamp": "9999-12-31T23:59:59-14:00"},
        )
        assert response.status_code == 400

    @pytest.mark.parametrize("digits", [309, 400, 4000])
    def test_integer_beyond_a_double_in_properties_is_400(
        self, post: Any, stored_events: Any, digits: int
    ) -> None:
        props = '{"n": 1' + "0" * digits + "}"
        response = post(type="custom_event", event_name="e", properties=props)
        assert response.status_code == 400
        assert response.get_json()["details"]["fieldErrors"] == {
            "properties": ["Properties must be a valid JSON string"]
        }
        assert stored_events() == []

    def test_one_bad_item_fails_alone_in_a_batch(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
    ) -> None:
        base = {"api_key": api_key, "site_id": site["site_id"]}
        items = [
            {**base, "pathname": "/a"},
            {**base, "timestamp": "9999-12-31T23:59:59-14:00"},
            {**base, "type": "custom_event", "event_name": "e", "properties": '{"n": 1e400}'},
            {**base, "pathname": "/b"},
        ]
        response = client.post("/api/track/batch", json=items)
        assert response.status_code == 200
        body = response.get_json()
        assert [r["success"] for r in body["results"]] == [True, False, False, True]
        assert body["accepted"] == 2 and body["rejected"] == 2
        assert [e["pathname"] for e in stored_events()] == ["/a", "/b"]

    def test_an_unexpected_error_in_one_item_is_that_items_failure(
        self,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import rybbit.batch

        real = rybbit.batch.start_event

        def flaky(store: Any, payload: dict[str, Any], *args: Any) -> Any:
            if payload.get("pathname") == "/boom":
                raise RuntimeError("a bug")
            return real(store, payload, *args)

        monkeypatch.setattr(rybbit.batch, "start_event", flaky)
        base = {"api_key": api_key, "site_id": site["site_id"]}
        response = client.post(
            "/api/track/batch",
            json=[{**base, "pathname": "/a"}, {**base, "pathname": "/boom"}, base],
        )
        assert response.status_code == 200
        results = response.get_json()["results"]
        assert results[1] == {"index": 1, "success": False, "error": "Internal server error"}
        assert results[0]["success"] and results[2]["success"]
        assert len(stored_events()) == 2

    @pytest.mark.parametrize(
        "query",
        [
            "cursor=999999999999999_ffffffffffffffffffffffff",
            "from=9999-12-31T23:59:59-14:00",
            "to=0001-01-01T00:00:00%2B14:00",
        ],
    )
    def test_events_query_out_of_range_is_400(
        self, app: Flask, site: dict[str, Any], query: str
    ) -> None:
        app.extensions["rybbit.admin_token"] = ADMIN_TOKEN
        response = app.test_client().get(
            f"/api/admin/sites/{site['site_id']}/events?{query}", headers=ADMIN
        )
        assert response.status_code == 400
        assert_contract_answer(response)

    @pytest.mark.parametrize("when", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
    def test_key_expiry_out_of_range_is_400(
        self, app: Flask, site: dict[str, Any], when: str
    ) -> None:
        app.extensions["rybbit.admin_token"] = ADMIN_TOKEN
        response = app.test_client().post(
            f"/api/admin/sites/{site['site_id']}/api-keys", json={"expires_at": when}, headers=ADMIN
        )
        assert response.status_code == 400
        assert "expires_at" in response.get_json()["details"]["fieldErrors"]

    def test_key_expiry_with_an_offset_is_stored_in_utc(
        self, app: Flask, site: dict[str, Any]
    ) -> None:
        app.extensions["rybbit.admin_token"] = ADMIN_TOKEN
        response = app.test_client().post(
            f"/api/admin/sites/{site['site_id']}/api-keys",
            json={"expires_at": "2999-01-01T10:00:00+02:00"},
            headers=ADMIN,
        )
        assert response.status_code == 201
        assert response.get_json()["expires_at"].startswith("2999-01-01T08:00:00")


# --- property tests ------------------------------------------------------------------------

# Every UTC offset Python accepts (up to a day either way), with seconds.
offsets = st.integers(min_value=-86399, max_value=86399).map(
    lambda s: timezone(timedelta(seconds=s))
)
iso_moments = st.one_of(
    st.datetimes(timezones=st.none() | offsets).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "9999-12-31T23:59:59.999999-23:59",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59Z",
            "0001-01-01",
            "2024-02-30T00:00:00",
            "",
            " ",
            "\u0663",  # an Arabic-Indic digit: isdigit() but not ASCII
        ]
    ),
)
big_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**63 + 2),
    st.integers(min_value=10**300, max_value=10**320),
    st.integers(max_value=-(10**300), min_value=-(10**320)),
    # Finite: JSON has no infinity (1e999 and the like come as text, in number_texts).
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e300, allow_infinity=False),
)
number_texts = st.one_of(
    big_numbers.map(str),
    st.sampled_from(["1e309", "-1e400", "1" + "0" * 5000, "0." + "0" * 400 + "1"]),
)
json_texts = st.recursive(
    number_texts | st.sampled_from(['"s"', "null", "true", "[]", "{}"]),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(st.text(max_size=4), inner, max_size=3).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=8,
)
ip_texts = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(
        ["fe80::1%eth0", "::ffff:1.2.3.4", "1.2.3.4/33", "::/0", "0.0.0.0/0", "256.1.1.1", ""]
    ),
    st.text(max_size=20),
)
cursors = st.one_of(
    st.builds(
        lambda ms, oid: f"{ms}_{oid}",
        st.integers(min_value=0, max_value=10**15 - 1),
        st.text(alphabet="0123456789abcdef", min_size=24, max_size=24),
    ),
    st.text(max_size=50),
)

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module", params=STORES)
def fuzz_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Flask, dict[str, str]]]:
    """One app per store for all examples (rate limit off), with a site and a key."""
    mongo_uri = None
    if request.param == "mongo":
        base = request.getfixturevalue("mongo_server")
        mongo_uri = f"{base}/rybbit_badinput_{uuid.uuid4().hex[:8]}"
    os.environ["RYBBIT_INSTANCE_PATH"] = str(tmp_path_factory.mktemp("bad-input"))
    try:
        app = create_app(
            {
                "MONGO_URI": mongo_uri,
                "RATE_LIMIT": "off",
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "LOAD_PLUGINS": [],
            }
        )
    finally:
        del os.environ["RYBBIT_INSTANCE_PATH"]
    with app.app_context():
        site = sites.create_site(get_store(), name="fuzz", domain="fuzz.example")
        key = keys.create_key(get_store(), site["site_id"])
    yield app, {"api_key": key["api_key"], "site_id": site["site_id"]}
    if mongo_uri:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_uri)
        client.drop_database(client.get_default_database().name)
        client.close()


event_fields = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": iso_moments | big_numbers,
        "ip_address": ip_texts,
        "screenWidth": big_numbers,
        "lcp": big_numbers,
        "event_id": st.text(max_size=70),
        "type": st.sampled_from(["pageview", "custom_event", "error", "outbound"]),
        "event_name": st.text(max_size=5),
        "properties": json_texts,
    },
)


@SETTINGS
@given(fields=event_fields)
def test_track_never_fails(fuzz_app: tuple[Flask, dict[str, str]], fields: dict[str, Any]) -> None:
    app, credentials = fuzz_app
    response = app.test_client().post("/api/track", json={**credentials, **fields})
    assert_contract_answer(response)


@SETTINGS
@given(items=st.lists(event_fields, min_size=1, max_size=5))
def test_batch_never_fails_and_answers_every_item(
    fuzz_app: tuple[Flask, dict[str, str]], items: list[dict[str, Any]]
) -> None:
    app, credentials = fuzz_app
    response = app.test_client().post(
        "/api/track/batch", json=[{**credentials, **item} for item in items]
    )
    assert_contract_answer(response)
    results = response.get_json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))


@SETTINGS
@given(
    query=st.fixed_dictionaries(
        {},
        optional={
            "from": iso_moments | number_texts,
            "to": iso_moments | number_texts,
            "cursor": cursors,
            "limit": number_texts,
            "order": st.sampled_from(["asc", "desc", "x"]),
        },
    )
)
def test_events_query_never_fails(
    fuzz_app: tuple[Flask, dict[str, str]], query: dict[str, str]
) -> None:
    app, credentials = fuzz_app
    response = app.test_client().get(
        f"/api/admin/sites/{credentials['site_id']}/events", query_string=query, headers=ADMIN
    )
    assert_contract_answer(response)


@SETTINGS
@given(
    expires_at=iso_moments | big_numbers,
    grace=big_numbers,
    key_id=st.text(min_size=1, max_size=30).filter(lambda t: "/" not in t),
)
def test_key_routes_never_fail(
    fuzz_app: tuple[Flask, dict[str, str]], expires_at: Any, grace: Any, key_id: str
) -> None:
    app, credentials = fuzz_app
    client = app.test_client()
    base = f"/api/admin/sites/{credentials['site_id']}/api-keys"
    created = client.post(base, json={"expires_at": expires_at}, headers=ADMIN)
    assert_contract_answer(created)
    target = created.get_json()["id"] if created.status_code == 201 else key_id
    rotated = client.post(f"{base}/{target}/rotate", json={"grace_seconds": grace}, headers=ADMIN)
    assert_contract_answer(rotated)
    assert_contract_answer(client.delete(f"{base}/{key_id}", headers=ADMIN))


@SETTINGS
@given(
    excluded_ips=st.lists(ip_texts, max_size=4),
    countries=st.lists(st.text(max_size=3), max_size=3),
    site_id=st.text(min_size=1, max_size=30).filter(lambda t: "/" not in t),
    client_ip=ip_texts,
)
def test_site_routes_never_fail(
    fuzz_app: tuple[Flask, dict[str, str]],
    excluded_ips: list[str],
    countries: list[str],
    site_id: str,
    client_ip: str,
) -> None:
    app, credentials = fuzz_app
    client = app.test_client()
    changes = {"settings": {"excluded_ips": excluded_ips, "excluded_countries": countries}}
    for path in (f"/api/admin/sites/{credentials['site_id']}", f"/api/admin/sites/{site_id}"):
        assert_contract_answer(client.patch(path, json=changes, headers=ADMIN))
        assert_contract_answer(client.get(path, headers=ADMIN))
    # Whatever settings were stored, tracking still answers by the contract.
    assert_contract_answer(client.post("/api/track", json={**credentials, "ip_address": client_ip}))

"""Rybbit parity: every event Rybbit's handler (trackEvent.ts) would store is stored here too,
with the same values, and what both refuse is refused with zod's words."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import sites
from rybbit.schemas import DISCRIMINATOR_MESSAGE
from rybbit.store import get_store
from tests.test_track_contract import assert_invalid, assert_ok

OUTBOUND_MESSAGE = "Properties must be valid JSON with outbound link fields (url required, text and target optional)"
ERROR_MESSAGE = (
    "Properties must be valid JSON with error fields "
    "(message, stack, fileName, lineNumber, columnNumber)"
)


def post_raw(client: FlaskClient, api_key: str, site: dict[str, Any], fields: str) -> Any:
    """POST a body written by hand (numbers such as 1e400 that json.dumps cannot write)."""
    head = json.dumps({"api_key": api_key, "site_id": site["site_id"]})[:-1]
    return client.post("/api/track", data=head + fields + "}", content_type="application/json")


class TestPropertiesThatAreNotJSON:
    @pytest.mark.parametrize("event_type", ["pageview", "performance"])
    @pytest.mark.parametrize("props", ["{not json", "plain text", "", "{'a': 1}", '{"a": NaN}'])
    def test_pageview_and_performance_are_stored_without_them(
        self, post: Any, stored_events: Any, event_type: str, props: str
    ) -> None:
        assert_ok(post(type=event_type, pathname="/p", properties=props))
        (event,) = stored_events()
        assert event["pathname"] == "/p" and "properties" not in event

    def test_their_length_is_still_checked(self, post: Any) -> None:
        details = assert_invalid(post(properties="x" * 2049))
        assert details["fieldErrors"]["properties"] == [
            "String must contain at most 2048 character(s)"
        ]

    def test_custom_events_are_refused(self, post: Any, stored_events: Any) -> None:
        details = assert_invalid(post(type="custom_event", event_name="e", properties="{no"))
        assert details["fieldErrors"] == {"properties": ["Properties must be a valid JSON string"]}
        assert stored_events() == []

    @pytest.mark.parametrize(
        ("event_type", "message"), [("outbound", OUTBOUND_MESSAGE), ("error", ERROR_MESSAGE)]
    )
    def test_outbound_and_error_say_their_own_rule(
        self, post: Any, event_type: str, message: str
    ) -> None:
        details = assert_invalid(post(type=event_type, event_name="E", properties="{no"))
        assert details["fieldErrors"] == {"properties": [message]}


class TestOutboundRules:
    @pytest.mark.parametrize(
        "props",
        [
            {"url": "https://x.example/", "text": None},
            {"url": "https://x.example/", "text": 0, "target": False},
            {"url": "https://x.example/", "text": "", "target": None},
            {"url": "   https://x.example/a"},  # WHATWG strips leading spaces
            {"url": "https://x.example/a path with spaces"},
            {"url": "mailto:someone@x.example"},
            {"url": "\thttps://x.example/"},
        ],
    )
    def test_what_rybbit_accepts_is_stored(
        self, post: Any, stored_events: Any, props: dict[str, Any]
    ) -> None:
        assert_ok(post(type="outbound", properties=json.dumps(props)))
        assert stored_events()[0]["properties"] == props

    @pytest.mark.parametrize(
        "props",
        [
            {"url": "https://x.example/", "text": 5},
            {"url": "https://x.example/", "target": True},
            {"url": "https://x.example/", "text": []},  # an empty array is truthy in JavaScript
            {"url": "https://exa mple.com/"},
            {"url": "not a url"},
            {"url": "//x.example/relative"},
            {"url": 5},
            "https://x.example/",
            None,
        ],
    )
    def test_what_rybbit_refuses_is_refused(self, post: Any, props: Any) -> None:
        details = assert_invalid(post(type="outbound", properties=json.dumps(props)))
        assert details["fieldErrors"] == {"properties": [OUTBOUND_MESSAGE]}


class TestErrorRules:
    @pytest.mark.parametrize(
        "extra",
        [
            {"lineNumber": None, "columnNumber": None, "fileName": None, "stack": None},
            {"lineNumber": 0, "columnNumber": 0},
            {"fileName": False, "stack": ""},
            {"lineNumber": "", "fileName": 0},
        ],
    )
    def test_falsy_values_of_another_type_pass(
        self, post: Any, stored_events: Any, extra: dict[str, Any]
    ) -> None:
        props = {"message": "boom", **extra}
        assert_ok(post(type="error", event_name="TypeError", properties=json.dumps(props)))
        assert stored_events()[0]["properties"] == props

    @pytest.mark.parametrize(
        "props",
        [
            {"message": "boom", "lineNumber": "12"},
            {"message": "boom", "columnNumber": True},
            {"message": "boom", "fileName": 1},
            {"message": "boom", "stack": {"frames": []}},
            {"message": None},
            {"stack": "s"},
        ],
    )
    def test_truthy_values_of_another_type_fail(self, post: Any, props: dict[str, Any]) -> None:
        details = assert_invalid(
            post(type="error", event_name="TypeError", properties=json.dumps(props))
        )
        assert details["fieldErrors"] == {"properties": [ERROR_MESSAGE]}


def test_an_event_over_64_kib_that_rybbit_accepts_is_stored(
    client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    """JSON may escape every character (6 bytes each) and pad with whitespace: a valid event can
    be far larger than its fields' limits suggest. Rybbit's cap is Fastify's 1 MiB."""
    title = "".join(f"\\u{ord(c):04x}" for c in "t" * 512)
    fields = ', "page_title": "' + title + '"' + " " * 200_000
    assert 200_000 < len(fields) < 1024 * 1024 - 100
    assert_ok(post_raw(client, api_key, site, fields))
    assert stored_events()[0]["page_title"] == "t" * 512
    response = post_raw(client, api_key, site, " " * 1024 * 1024)
    assert response.status_code == 413


@pytest.mark.parametrize("given", ["01", "001", "1"])
def test_site_id_with_leading_zeros_names_the_numbered_site(
    post: Any, site: dict[str, Any], stored_events: Any, given: str
) -> None:
    assert site["site_id"] == "1"
    assert_ok(post(site_id=given))
    assert stored_events()[0]["site_id"] == "1"


@pytest.mark.parametrize("given", ["1.0", " 1", "1a", "\u0661"])
def test_site_ids_that_are_not_plain_digits_are_not_numbers(post: Any, given: str) -> None:
    response = post(site_id=given)
    assert response.status_code == 404 and response.get_json()["error"] == "Site not found"


class TestExcludedIPRanges:
    @pytest.fixture
    def ranged_site(self, app: Flask, site: dict[str, Any]) -> dict[str, Any]:
        with app.app_context():
            excluded = ["10.0.0.1-10.0.0.9", " 2001:db8::10 - 2001:db8::1f "]
            sites.update_site(
                get_store(), site["site_id"], {"settings": {"excluded_ips": excluded}}
            )
        return site

    @pytest.mark.parametrize(
        ("address", "excluded"),
        [
            ("10.0.0.1", True),
            ("10.0.0.5", True),
            ("10.0.0.9", True),
            ("10.0.0.10", False),
            ("10.0.0.0", False),
            ("2001:db8::10", True),
            ("2001:db8::1f", True),
            ("2001:db8::20", False),
            ("::ffff:10.0.0.3", True),
        ],
    )
    def test_ranges_are_inclusive(
        self, post: Any, ranged_site: dict[str, Any], address: str, excluded: bool
    ) -> None:
        body = post(ip_address=address).get_json()
        assert body.get("message") == ("Event not tracked - IP excluded" if excluded else None)


class TestZodMessages:
    @pytest.mark.parametrize("value", [None, 5, True, [], {}, "identify", "PageView"])
    def test_an_unknown_type_is_the_only_error(self, post: Any, value: Any) -> None:
        details = assert_invalid(post(type=value, screenWidth=-1, foo="bar", api_key=...))
        assert details == {"fieldErrors": {"type": [DISCRIMINATOR_MESSAGE]}, "formErrors": []}

    @pytest.mark.parametrize(
        ("raw", "messages"),
        [
            ("1e400", ["Expected integer, received float"]),
            ("-1e400", ["Expected integer, received float", "Number must be greater than 0"]),
            ("-1.5", ["Expected integer, received float", "Number must be greater than 0"]),
            ("0.5", ["Expected integer, received float"]),
            ("1" + "0" * 400, ["Expected integer, received float"]),
            (
                "-1" + "0" * 400,
                ["Expected integer, received float", "Number must be greater than 0"],
            ),
        ],
    )
    def test_screen_sizes(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, raw: str, messages: list[str]
    ) -> None:
        details = assert_invalid(post_raw(client, api_key, site, ', "screenWidth": ' + raw))
        assert details["fieldErrors"] == {"screenWidth": messages}

    def test_an_infinite_metric_is_stored_as_null(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
    ) -> None:
        """zod accepts Infinity (what 1e400 parses to); Rybbit's insert writes it as null."""
        fields = ', "type": "performance", "lcp": 1e400, "cls": 0.1'
        assert_ok(post_raw(client, api_key, site, fields))
        event = stored_events()[0]
        assert event["lcp"] is None and event["cls"] == 0.1

    def test_a_negative_infinite_metric_is_refused(
        self, client: FlaskClient, site: dict[str, Any], api_key: str
    ) -> None:
        fields = ', "type": "performance", "lcp": -1e400'
        details = assert_invalid(post_raw(client, api_key, site, fields))
        assert details["fieldErrors"] == {"lcp": ["Number must be greater than or equal to 0"]}


class TestUserId:
    @pytest.mark.parametrize(
        ("given", "stored"),
        [("  alice ", "alice"), ("\ufeffbob\u2028", "bob"), ("\tcarol\n", "carol"), ("d", "d")],
    )
    def test_is_trimmed_as_javascript_trims(
        self, post: Any, stored_events: Any, given: str, stored: str
    ) -> None:
        assert_ok(post(user_id=given))
        assert stored_events()[0]["user_id"] == stored

    def test_a_blank_one_is_no_user_id(self, post: Any, stored_events: Any) -> None:
        assert_ok(post(user_id="   ", pathname="/blank"))
        assert_ok(post(user_id=" ", pathname="/blank-too"))
        first, second = stored_events()
        # No client id: the identity plugin gives the visitor an anonymous one (the same for
        # both events), instead of storing "" for everyone.
        assert first["anonymous"] is True and second["anonymous"] is True
        assert first["user_id"] == second["user_id"] and first["user_id"].strip()

    def test_validation_drops_a_blank_one(self) -> None:
        from rybbit.schemas import TrackEventSchema

        payload = TrackEventSchema().load({"api_key": "k", "site_id": "1", "user_id": " \t "})
        assert "user_id" not in payload

    def test_its_length_is_checked_before_trimming(self, post: Any) -> None:
        details = assert_invalid(post(user_id=" " * 250 + "x" * 10))
        assert details["fieldErrors"]["user_id"] == ["String must contain at most 255 character(s)"]


class TestBearerKeys:
    def test_a_bearer_key_authenticates_like_the_body_key(
        self,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
    ) -> None:
        response = client.post(
            "/api/track",
            json={"site_id": site["site_id"], "pathname": "/bearer"},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert_ok(response)
        assert stored_events()[0]["pathname"] == "/bearer"

    @pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
    def test_the_scheme_is_case_insensitive(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, scheme: str
    ) -> None:
        response = client.post(
            "/api/track",
            json={"site_id": site["site_id"]},
            headers={"Authorization": f"{scheme} {api_key}"},
        )
        assert_ok(response)

    def test_the_same_key_in_both_places_is_fine(
        self, client: FlaskClient, site: dict[str, Any], api_key: str
    ) -> None:
        response = client.post(
            "/api/track",
            json={"site_id": site["site_id"], "api_key": api_key},
            headers={"Authorization": f"Bearer {api_key}"},
        )
        assert_ok(response)

    @pytest.mark.parametrize("in_body", ["other", "header"])
    def test_two_different_keys_are_403(
        self,
        app: Flask,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
        in_body: str,
    ) -> None:
        from rybbit import keys

        with app.app_context():
            other = keys.create_key(get_store(), site["site_id"])["api_key"]
        body_key, header_key = (other, api_key) if in_body == "other" else (api_key, other)
        response = client.post(
            "/api/track",
            json={"site_id": site["site_id"], "api_key": body_key},
            headers={"Authorization": f"Bearer {header_key}"},
        )
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Invalid API key"}
        assert stored_events() == []

    @pytest.mark.parametrize("token", ["rb_" + "0" * 32, "not-a-key"])
    def test_a_wrong_bearer_key_is_403(
        self, client: FlaskClient, site: dict[str, Any], token: str
    ) -> None:
        response = client.post(
            "/api/track",
            json={"site_id": site["site_id"]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 403

    def test_other_schemes_are_ignored(self, client: FlaskClient, site: dict[str, Any]) -> None:
        response = client.post(
            "/api/track", json={"site_id": site["site_id"]}, headers={"Authorization": "Basic eDp5"}
        )
        # No key, so a keyless event, refused for want of an allowed origin.
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Origin not allowed"}

    def test_batches_take_the_bearer_key_for_items_without_one(
        self,
        app: Flask,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
    ) -> None:
        from rybbit import keys

        with app.app_context():
            other = keys.create_key(get_store(), site["site_id"])["api_key"]
        response = client.post(
            "/api/track/batch",
            json=[
                {"site_id": site["site_id"], "pathname": "/a"},
                {"site_id": site["site_id"], "pathname": "/b", "api_key": api_key},
                {"site_id": site["site_id"], "pathname": "/c", "api_key": other},
            ],
            headers={"Authorization": f"Bearer {api_key}"},
        )
        body = response.get_json()
        assert (body["accepted"], body["rejected"]) == (2, 1)
        assert body["results"][2]["error"] == "Invalid API key"
        assert sorted(e["pathname"] for e in stored_events()) == ["/a", "/b"]

    def test_browsers_may_send_it(self, client: FlaskClient) -> None:
        response = client.options(
            "/api/track",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("10.0.0.1-10.0.0.9", "10.0.0.1-10.0.0.9"),
        (" 10.0.0.1 - 10.0.0.9 ", "10.0.0.1-10.0.0.9"),
        ("2001:DB8::1-2001:db8::ff", "2001:db8::1-2001:db8::ff"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.7", "10.0.0.7"),
    ],
)
def test_admin_settings_take_ranges_in_canonical_form(given: str, stored: str) -> None:
    from rybbit.admin_schemas import SettingsSchema

    assert SettingsSchema().load({"excluded_ips": [given]}) == {"excluded_ips": [stored]}


@pytest.mark.parametrize(
    "given",
    ["10.0.0.9-10.0.0.1", "10.0.0.1-2001:db8::1", "10.0.0.1-", "a-b", "10.0.0.1-10.0.0.2-3"],
)
def test_admin_settings_refuse_broken_ranges(given: str) -> None:
    from marshmallow import ValidationError

    from rybbit.admin_schemas import SettingsSchema

    with pytest.raises(ValidationError):
        SettingsSchema().load({"excluded_ips": [given]})

"""The /api/track wire contract: payloads, limits, types, and every error shape and status."""

from __future__ import annotations

import json
from typing import Any

import pytest

STRING_LIMITS = [
    ("hostname", 253),
    ("pathname", 2048),
    ("querystring", 2048),
    ("referrer", 2048),
    ("page_title", 512),
    ("user_id", 255),
    ("user_agent", 512),
    ("language", 35),
    ("event_name", 256),
]


def assert_invalid(response: Any) -> dict[str, Any]:
    """A 400 in the contract's exact shape; returns its details."""
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"success", "error", "details"}
    assert body["success"] is False and body["error"] == "Invalid payload"
    assert set(body["details"]) == {"fieldErrors", "formErrors"}
    assert isinstance(body["details"]["fieldErrors"], dict)
    assert isinstance(body["details"]["formErrors"], list)
    return dict(body["details"])


def assert_ok(response: Any) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"success": True}


def test_pageview_is_the_default_type(post: Any, stored_events: Any) -> None:
    assert_ok(post(pathname="/home"))
    (event,) = stored_events()
    assert event["type"] == "pageview" and event["pathname"] == "/home"


@pytest.mark.parametrize("path", ["/api/track", "/track"])
def test_both_paths_accept_events(post: Any, stored_events: Any, path: str) -> None:
    assert_ok(post(path, pathname="/x"))
    assert len(stored_events()) == 1


@pytest.mark.parametrize(("field", "limit"), STRING_LIMITS)
def test_string_limit_accepts_the_maximum(
    post: Any, stored_events: Any, field: str, limit: int
) -> None:
    extra = (
        {"type": "custom_event", "event_name": "e"}
        if field != "event_name"
        else {"type": "custom_event"}
    )
    assert_ok(post(**{**extra, field: "a" * limit}))
    assert stored_events()[0][field] == "a" * limit


@pytest.mark.parametrize(("field", "limit"), STRING_LIMITS)
def test_string_limit_rejects_one_more(
    post: Any, stored_events: Any, field: str, limit: int
) -> None:
    details = assert_invalid(post(**{field: "a" * (limit + 1)}))
    assert details["fieldErrors"][field] == [f"String must contain at most {limit} character(s)"]
    assert stored_events() == []


@pytest.mark.parametrize("field", [f for f, _ in STRING_LIMITS] + ["ip_address", "api_key"])
@pytest.mark.parametrize(
    ("value", "received"),
    [(5, "number"), (True, "boolean"), ([], "array"), ({}, "object"), (None, "null")],
)
def test_string_fields_reject_other_types(post: Any, field: str, value: Any, received: str) -> None:
    details = assert_invalid(post(**{field: value}))
    assert details["fieldErrors"][field] == [f"Expected string, received {received}"]


def test_properties_limit_is_2048_except_for_errors(post: Any) -> None:
    props = json.dumps({"k": "v" * 2039})
    assert len(props) == 2048
    assert_ok(post(type="custom_event", event_name="e", properties=props))
    longer = json.dumps({"k": "v" * 2040})
    details = assert_invalid(post(type="custom_event", event_name="e", properties=longer))
    assert details["fieldErrors"]["properties"] == ["String must contain at most 2048 character(s)"]
    error_props = json.dumps({"message": "m" * 4080})
    assert len(error_props) <= 4096
    assert_ok(post(type="error", event_name="TypeError", properties=error_props))
    too_long = json.dumps({"message": "m" * 4090})
    details = assert_invalid(post(type="error", event_name="TypeError", properties=too_long))
    assert details["fieldErrors"]["properties"] == ["String must contain at most 4096 character(s)"]


@pytest.mark.parametrize("field", ["screenWidth", "screenHeight"])
def test_screen_sizes_are_positive_integers(post: Any, stored_events: Any, field: str) -> None:
    assert_ok(post(**{field: 1920}))
    stored_name = {"screenWidth": "screen_width", "screenHeight": "screen_height"}[field]
    assert stored_events()[0][stored_name] == 1920
    for bad, message in [
        (0, "Number must be greater than 0"),
        (-5, "Number must be greater than 0"),
        (1.5, "Expected integer, received float"),
        ("1920", "Expected number, received string"),
        (True, "Expected number, received boolean"),
        (10**30, "Number must be less than or equal to 65535"),
    ]:
        details = assert_invalid(post(**{field: bad}))
        assert details["fieldErrors"][field] == [message], bad


def test_integral_float_screen_size_is_an_integer(post: Any, stored_events: Any) -> None:
    # JavaScript has no int/float split: 390.0 is an integer there, and zod accepts it.
    assert_ok(post(screenWidth=390.0))
    stored = stored_events()[0]["screen_width"]
    assert stored == 390 and isinstance(stored, int)


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:db8::1", "192.168.1.1", "::1"])
def test_ip_addresses_v4_and_v6_are_accepted(post: Any, stored_events: Any, address: str) -> None:
    assert_ok(post(ip_address=address))
    assert len(stored_events()) == 1


@pytest.mark.parametrize("address", ["999.1.1.1", "1.2.3", "example.com", "", "1.2.3.4 "])
def test_invalid_ip_addresses_are_rejected(post: Any, address: str) -> None:
    details = assert_invalid(post(ip_address=address))
    assert details["fieldErrors"]["ip_address"] == ["Invalid ip"]


def test_site_id_may_be_a_json_number(post: Any, site: dict[str, Any], stored_events: Any) -> None:
    assert_ok(post(site_id=int(site["site_id"])))
    assert stored_events()[0]["site_id"] == site["site_id"]


@pytest.mark.parametrize("value", [1.5, True, None, ["1"]])
def test_site_id_of_another_type_is_invalid(post: Any, value: Any) -> None:
    details = assert_invalid(post(site_id=value))
    assert "site_id" in details["fieldErrors"]


def test_empty_site_id_is_invalid(post: Any) -> None:
    details = assert_invalid(post(site_id=""))
    assert details["fieldErrors"]["site_id"] == ["String must contain at least 1 character(s)"]


def test_a_missing_site_id_is_a_required_field(post: Any) -> None:
    details = assert_invalid(post(site_id=...))
    assert details["fieldErrors"] == {"site_id": ["Required"]}


def test_without_a_key_the_event_is_keyless_and_needs_an_allowed_origin(
    post: Any, stored_events: Any
) -> None:
    response = post(api_key=...)  # no Origin: not from a page of the site (tests/test_browser.py)
    assert response.status_code == 403
    assert response.get_json() == {"success": False, "error": "Origin not allowed"}
    assert stored_events() == []


def test_unknown_fields_are_rejected(post: Any, stored_events: Any) -> None:
    details = assert_invalid(post(pathname="/", foo=1, bar="x"))
    assert details["formErrors"] == ["Unrecognized key(s) in object: 'foo', 'bar'"]
    assert details["fieldErrors"] == {}
    assert stored_events() == []


def test_unknown_type_is_rejected(post: Any) -> None:
    details = assert_invalid(post(type="identify"))
    assert details["fieldErrors"]["type"] == [
        "Invalid discriminator value. Expected 'pageview' | 'custom_event' | 'performance' | "
        "'outbound' | 'error' | 'button_click' | 'copy' | 'form_submit' | 'input_change'"
    ]


def test_every_field_error_is_reported_at_once(post: Any) -> None:
    details = assert_invalid(
        post(type="custom_event", page_title=1, screenWidth=-1, language="x" * 40)
    )
    assert set(details["fieldErrors"]) == {"event_name", "page_title", "screenWidth", "language"}
    assert "Custom events require event_name" in details["formErrors"]


class TestCustomEvents:
    def test_properties_are_stored_as_a_document(self, post: Any, stored_events: Any) -> None:
        props = {"amount": 99.99, "currency": "USD", "items": [1, 2], "nested": {"ok": True}}
        assert_ok(post(type="custom_event", event_name="purchase", properties=json.dumps(props)))
        event = stored_events()[0]
        assert event["properties"] == props and event["event_name"] == "purchase"

    def test_event_name_is_required(self, post: Any) -> None:
        details = assert_invalid(post(type="custom_event", properties="{}"))
        assert details["fieldErrors"] == {"event_name": ["Required"]}
        assert details["formErrors"] == ["Custom events require event_name"]

    def test_empty_event_name_is_rejected(self, post: Any) -> None:
        details = assert_invalid(post(type="custom_event", event_name=""))
        assert details["fieldErrors"]["event_name"] == [
            "String must contain at least 1 character(s)"
        ]

    def test_properties_are_optional(self, post: Any, stored_events: Any) -> None:
        assert_ok(post(type="custom_event", event_name="signup"))
        assert "properties" not in stored_events()[0]

    @pytest.mark.parametrize(
        "props",
        [
            "{not json",
            "{'a': 1}",
            "",
            '{"a": NaN}',
            '{"a": Infinity}',
            '{"a": 1, "a": 2}',
            "[" * 40 + "]" * 40,
        ],
    )
    def test_invalid_json_properties_are_rejected(
        self, post: Any, stored_events: Any, props: str
    ) -> None:
        details = assert_invalid(post(type="custom_event", event_name="e", properties=props))
        assert details["fieldErrors"]["properties"] == ["Properties must be a valid JSON string"]
        assert stored_events() == []

    def test_properties_must_be_a_string(self, post: Any) -> None:
        details = assert_invalid(post(type="custom_event", event_name="e", properties={"a": 1}))
        assert details["fieldErrors"]["properties"] == ["Expected string, received object"]

    def test_keys_mongodb_would_misread_are_escaped(self, post: Any, stored_events: Any) -> None:
        props = {"$set": 1, "a.b": {"c.d": 2}, "plain": 3}
        assert_ok(post(type="custom_event", event_name="e", properties=json.dumps(props)))
        assert stored_events()[0]["properties"] == {
            "\uff04set": 1,
            "a\uff0eb": {"c\uff0ed": 2},
            "plain": 3,
        }

    def test_integers_beyond_64_bits_are_kept_as_doubles(
        self, post: Any, stored_events: Any
    ) -> None:
        assert_ok(
            post(type="custom_event", event_name="e", properties='{"n": 100000000000000000000}')
        )
        assert stored_events()[0]["properties"] == {"n": 1e20}


class TestPerformanceEvents:
    def test_metrics_are_stored(self, post: Any, stored_events: Any) -> None:
        assert_ok(post(type="performance", lcp=1200.5, cls=0.02, inp=80, fcp=None, ttfb=0))
        event = stored_events()[0]
        assert (event["lcp"], event["cls"], event["inp"], event["fcp"], event["ttfb"]) == (
            1200.5,
            0.02,
            80,
            None,
            0,
        )

    @pytest.mark.parametrize("metric", ["lcp", "cls", "inp", "fcp", "ttfb"])
    def test_metrics_must_be_non_negative_numbers(self, post: Any, metric: str) -> None:
        details = assert_invalid(post(type="performance", **{metric: -1}))
        assert details["fieldErrors"][metric] == ["Number must be greater than or equal to 0"]
        details = assert_invalid(post(type="performance", **{metric: "12"}))
        assert details["fieldErrors"][metric] == ["Expected number, received string"]

    def test_metrics_belong_to_performance_events_only(self, post: Any) -> None:
        details = assert_invalid(post(type="pageview", lcp=10))
        assert details["formErrors"] == ["Unrecognized key(s) in object: 'lcp'"]


class TestOutboundEvents:
    def test_url_is_stored(self, post: Any, stored_events: Any) -> None:
        props = {"url": "https://other.example/x?y=1", "text": "Go", "target": "_blank"}
        assert_ok(post(type="outbound", properties=json.dumps(props)))
        assert stored_events()[0]["properties"] == props

    @pytest.mark.parametrize(
        "props",
        [
            '{"text": "no url"}',
            '{"url": ""}',
            '{"url": "not a url"}',
            '{"url": "https://x.example", "text": 5}',
            '["https://x.example"]',
        ],
    )
    def test_url_is_required_and_valid(self, post: Any, props: str) -> None:
        details = assert_invalid(post(type="outbound", properties=props))
        assert details["fieldErrors"]["properties"] == [
            "Properties must be valid JSON with outbound link fields (url required, text and target optional)"
        ]

    def test_properties_are_required(self, post: Any) -> None:
        details = assert_invalid(post(type="outbound"))
        assert details["fieldErrors"]["properties"] == ["Required"]


class TestErrorEvents:
    def test_error_is_stored(self, post: Any, stored_events: Any) -> None:
        props = {
            "message": "x is undefined",
            "stack": "at f (a.js:1:2)",
            "fileName": "a.js",
            "lineNumber": 1,
            "columnNumber": 2,
        }
        assert_ok(post(type="error", event_name="TypeError", properties=json.dumps(props)))
        assert stored_events()[0]["properties"] == props

    @pytest.mark.parametrize(
        "props",
        [
            '{"stack": "s"}',
            '{"message": 5}',
            '{"message": "m", "lineNumber": "1"}',
            '{"message": "m", "fileName": 1}',
        ],
    )
    def test_message_is_required_and_fields_typed(self, post: Any, props: str) -> None:
        details = assert_invalid(post(type="error", event_name="TypeError", properties=props))
        assert details["fieldErrors"]["properties"] == [
            "Properties must be valid JSON with error fields (message, stack, fileName, lineNumber, columnNumber)"
        ]

    def test_event_name_and_properties_are_required(self, post: Any) -> None:
        details = assert_invalid(post(type="error"))
        assert details["fieldErrors"] == {"event_name": ["Required"], "properties": ["Required"]}


class TestBodyErrors:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"{not json", "Malformed JSON"),
            (b"", "Malformed JSON"),
            (b'{"a": NaN}', "Malformed JSON"),
            (b'{"site_id": "1", "site_id": "2"}', "Malformed JSON"),
            (b"\xff\xfe{}", "Malformed JSON"),
            (b"[" * 5000 + b"]" * 5000, "Malformed JSON"),
            (b"[]", "Expected object, received array"),
            (b'"text"', "Expected object, received string"),
            (b"null", "Expected object, received null"),
            (b"42", "Expected object, received number"),
        ],
    )
    def test_unusable_bodies_get_the_payload_error(
        self, client: Any, body: bytes, message: str
    ) -> None:
        details = assert_invalid(
            client.post("/api/track", data=body, content_type="application/json")
        )
        assert details["fieldErrors"] == {}
        assert len(details["formErrors"]) == 1 and details["formErrors"][0].startswith(message)

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/x-www-form-urlencoded", None]
    )
    def test_wrong_content_type_is_invalid(self, client: Any, content_type: str | None) -> None:
        response = client.post("/api/track", data='{"site_id": "1"}', content_type=content_type)
        details = assert_invalid(response)
        assert details["formErrors"] == ["Content-Type must be application/json"]

    def test_charset_parameter_is_fine(
        self, client: Any, site: dict[str, Any], api_key: str
    ) -> None:
        body = json.dumps({"api_key": api_key, "site_id": site["site_id"]})
        assert_ok(
            client.post("/api/track", data=body, content_type="application/json; charset=utf-8")
        )

    def test_oversized_body_is_413_before_parsing(self, client: Any, stored_events: Any) -> None:
        response = client.post(
            "/api/track", data=b"{" + b" " * (1024 * 1024) + b"}", content_type="application/json"
        )
        assert response.status_code == 413
        assert response.get_json() == {"success": False, "error": "Payload too large"}
        assert stored_events() == []

    @pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
    def test_wrong_method_is_405_in_json(self, client: Any, method: str) -> None:
        response = getattr(client, method)("/api/track")
        assert response.status_code == 405
        assert response.get_json() == {"success": False, "error": "Method not allowed"}
        assert "POST" in response.headers["Allow"]

    def test_unknown_route_is_404_in_json(self, client: Any) -> None:
        response = client.post("/api/nope", json={})
        assert response.status_code == 404
        assert response.get_json() == {"success": False, "error": "Not found"}

    def test_lone_surrogate_strings_are_rejected(
        self, client: Any, site: dict[str, Any], api_key: str
    ) -> None:
        # json.dumps writes the lone surrogate as the escape "\ud800", which is valid JSON text.
        body = json.dumps({"api_key": api_key, "site_id": site["site_id"], "page_title": "\ud800"})
        details = assert_invalid(
            client.post("/api/track", data=body, content_type="application/json")
        )
        assert details["fieldErrors"]["page_title"] == ["Invalid string: unpaired surrogate"]


class TestAuthentication:
    @pytest.mark.parametrize(
        "bad_key",
        [
            "rb_your_api_key_here",
            "rb_" + "0" * 32,
            "rb_" + "A" * 32,
            "xx_" + "0" * 32,
            "",
            "rb_" + "0" * 33,
        ],
    )
    def test_malformed_or_unknown_key_is_403(
        self, post: Any, stored_events: Any, bad_key: str
    ) -> None:
        response = post(api_key=bad_key)
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Invalid API key"}
        assert stored_events() == []

    def test_unknown_site_is_404(self, post: Any) -> None:
        response = post(site_id="999999")
        assert response.status_code == 404
        assert response.get_json() == {"success": False, "error": "Site not found"}

    def test_key_of_another_site_is_403(self, app: Any, post: Any, stored_events: Any) -> None:
        from rybbit import sites
        from rybbit.store import get_store

        with app.app_context():
            other = sites.create_site(get_store(), name="Other", domain="other.example")
        response = post(site_id=other["site_id"])
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Invalid API key"}
        assert stored_events() == []

    def test_validation_comes_before_authentication(self, post: Any) -> None:
        # A bad payload is a 400 whatever the key: clients learn about their payload first.
        assert_invalid(post(api_key="rb_nope", page_title=5))


def test_limits_count_utf16_units_as_javascript_does(post: Any) -> None:
    # 256 emoji are 512 UTF-16 units (the page_title limit); one more unit is too long.
    assert post(page_title="\U0001f600" * 256).status_code == 200
    details = assert_invalid(post(page_title="\U0001f600" * 256 + "a"))
    assert details["fieldErrors"]["page_title"] == ["String must contain at most 512 character(s)"]
    assert post(page_title="é" * 512).status_code == 200, "one unit each, like ASCII"

"""Keyless (browser) tracking, the origin rule, tracking-config, identify, CORS and the per-IP
limit, through Flask's test client on both stores. The real SDK in a real browser is
tests/test_browser_sdk.py."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import aliases, sites
from rybbit.lookup_cache import lookup_cache
from rybbit.origins import canonical_origin, origin_allowed, request_origin
from rybbit.plugin_loader import RUNNER_KEY
from rybbit.store import get_store

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
ADMIN_TOKEN = "test-admin-token-0123456789abcdefghij"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PAGE = {"Origin": "https://www.example.com", "User-Agent": CHROME}


@pytest.mark.parametrize(
    ("origin", "domain", "allowed"),
    [
        ("https://example.com", "example.com", True),
        ("https://www.example.com", "example.com", True),
        ("https://shop.eu.example.com:8443", "www.example.com", True),
        ("http://EXAMPLE.com.", "example.com", True),
        ("https://example.com.evil.net", "example.com", False),
        ("https://notexample.com", "example.com", False),
        ("https://example.co.uk", "example.com", False),
        ("https://shop.example.co.uk", "example.co.uk", True),
        ("https://bob.github.io", "alice.github.io", False),  # a public suffix
        ("https://alice.github.io", "alice.github.io", True),
        ("https://evil.github.io", "github.io", False),  # a bare suffix matches only itself
        ("http://localhost:3000", "localhost", True),
        ("http://127.0.0.1:3000", "localhost", False),
        ("http://127.0.0.1:3000", "127.0.0.1", True),
        ("http://127.0.0.2", "127.0.0.1", False),
        ("https://bücher.example", "xn--bcher-kva.example", True),
        ("null", "example.com", False),
        ("file:///index.html", "example.com", False),
        ("chrome-extension://abc", "example.com", False),
    ],
)
def test_origin_rule(origin: str, domain: str, allowed: bool) -> None:
    assert origin_allowed(request_origin(origin, None), domain, []) is allowed


def test_origin_rule_extra_origins_match_whole_origins() -> None:
    extra = ["https://partner.net", "http://localhost:8080"]
    assert origin_allowed("https://partner.net", "example.com", extra)
    assert not origin_allowed("http://partner.net", "example.com", extra)  # scheme differs
    assert not origin_allowed("https://www.partner.net", "example.com", extra)
    assert origin_allowed("http://localhost:8080", "example.com", extra)
    assert not origin_allowed("http://localhost:8081", "example.com", extra)


def test_the_referer_stands_in_for_a_missing_origin_but_not_for_a_null_one() -> None:
    assert request_origin(None, "https://a.example.com/p?q=1") == "https://a.example.com"
    assert request_origin("null", "https://a.example.com/p") is None
    assert request_origin(None, None) is None
    assert canonical_origin("HTTPS://Example.COM:443/") == "https://example.com"
    assert canonical_origin("http://[::1]:8000") == "http://[::1]:8000"


@pytest.fixture
def send(client: FlaskClient, site: dict[str, Any]) -> Any:
    """POST a keyless event for the test's site (domain example.com) with these headers."""

    def _send(headers: dict[str, str] | None = None, path: str = "/api/track", **fields: Any):
        body = {"site_id": site["site_id"], "pathname": "/", **fields}
        return client.post(path, json=body, headers=PAGE if headers is None else headers)

    return _send


class TestKeylessTrack:
    def test_an_event_from_the_sites_own_page_is_stored_without_a_key(
        self, send: Any, stored_events: Any
    ) -> None:
        response = send(page_title="Home")
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"success": True}
        (event,) = stored_events()
        assert event["api_key_id"] is None
        assert event["page_title"] == "Home"
        assert event["browser"] == "Chrome"

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Origin": "https://evil.example.net"},
            {"Origin": "null", "Referer": "https://www.example.com/"},
            {"Referer": "https://example.com.evil.net/page"},
        ],
    )
    def test_anything_but_an_allowed_origin_is_403_and_stores_nothing(
        self, send: Any, stored_events: Any, headers: dict[str, str]
    ) -> None:
        response = send({**headers, "User-Agent": CHROME})
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Origin not allowed"}
        assert stored_events() == []

    def test_a_referer_from_the_site_is_enough(self, send: Any, stored_events: Any) -> None:
        response = send({"Referer": "https://shop.example.com/cart", "User-Agent": CHROME})
        assert response.status_code == 200
        assert len(stored_events()) == 1

    def test_an_unknown_site_is_404(self, client: FlaskClient) -> None:
        response = client.post("/api/track", json={"site_id": "999"}, headers=PAGE)
        assert response.status_code == 404
        assert response.get_json() == {"success": False, "error": "Site not found"}

    def test_bad_input_is_400_before_the_origin_is_judged(self, send: Any) -> None:
        response = send({}, type="custom_event")
        assert response.status_code == 400
        assert response.get_json()["details"]["fieldErrors"] == {"event_name": ["Required"]}

    def test_a_browser_cannot_choose_its_ip_or_user_agent(
        self, app: Flask, client: FlaskClient, site: dict[str, Any], send: Any, stored_events: Any
    ) -> None:
        set_settings(app, site, {"track_ip": True})
        response = send(ip_address="203.0.113.9", user_agent="Googlebot/2.1")
        assert response.status_code == 200
        (event,) = stored_events()
        assert event["ip_address"] == "127.0.0.1"  # the connection's, not the body's
        assert event["browser"] == "Chrome"
        assert "is_bot" not in event

    def test_bots_are_blocked_when_the_site_says_so(
        self, app: Flask, site: dict[str, Any], send: Any, stored_events: Any
    ) -> None:
        bot = {"Origin": "https://example.com", "User-Agent": "Googlebot/2.1"}
        response = send(bot)
        assert response.get_json() == {
            "success": True,
            "message": "Event not tracked - bot detected",
        }
        assert stored_events() == []
        set_settings(app, site, {"block_bots": False})
        assert send(bot).status_code == 200
        (event,) = stored_events()
        assert event["is_bot"] is True

    def test_allowed_origins_admit_another_site(
        self, app: Flask, site: dict[str, Any], send: Any, stored_events: Any
    ) -> None:
        partner = {"Origin": "https://partner.net", "User-Agent": CHROME}
        assert send(partner).status_code == 403
        set_settings(
            app, site, {"settings": {"allowed_origins": ["https://partner.net"]}}["settings"]
        )
        assert send(partner).status_code == 200
        assert len(stored_events()) == 1

    def test_the_batch_endpoint_still_needs_a_key(
        self, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        response = client.post(
            "/api/track/batch", json={"events": [{"site_id": site["site_id"]}]}, headers=PAGE
        )
        body = response.get_json()
        assert response.status_code in (200, 207, 400), body
        assert "api_key" in str(body)

    def test_keyed_events_ignore_the_origin(
        self, post: Any, stored_events: Any, client: FlaskClient
    ) -> None:
        assert post(pathname="/x").status_code == 200  # no Origin at all
        assert len(stored_events()) == 1


class TestInteractionEvents:
    """The browser SDK's button_click, copy, form_submit and input_change, with Rybbit's rules."""

    @pytest.mark.parametrize(
        ("event_type", "properties"),
        [
            ("button_click", None),
            ("button_click", '{"text": "Buy"}'),
            ("copy", '{"sourceElement": "p", "text": "hi", "textLength": 2}'),
            ("copy", '{"sourceElement": "p"}'),
            (
                "form_submit",
                '{"formId": "", "formName": "", "formAction": "", "method": "GET",'
                ' "fieldCount": 3}',
            ),
            ("input_change", '{"element": "input", "inputName": "email", "inputType": "text"}'),
        ],
    )
    def test_accepted(
        self, post: Any, stored_events: Any, event_type: str, properties: str | None
    ) -> None:
        fields = {"type": event_type}
        if properties is not None:
            fields["properties"] = properties
        response = post(**fields)
        assert response.status_code == 200, response.get_json()
        (event,) = stored_events()
        assert event["type"] == event_type

    @pytest.mark.parametrize(
        ("event_type", "properties", "message"),
        [
            ("button_click", "{oops", "Properties must be valid JSON"),
            ("copy", None, "Required"),
            (
                "copy",
                '{"text": "hi"}',
                "Properties must be valid JSON with copy fields (sourceElement required, "
                "text and textLength optional)",
            ),
            (
                "copy",
                '{"sourceElement": "p", "textLength": -1}',
                "Properties must be valid JSON with copy fields (sourceElement required, "
                "text and textLength optional)",
            ),
            (
                "form_submit",
                '{"formId": "", "formName": "", "formAction": "", "method": "GET"}',
                "Properties must be valid JSON with form_submit fields (formId, formName, "
                "formAction, method, fieldCount required)",
            ),
            (
                "input_change",
                '{"element": "input"}',
                "Properties must be valid JSON with input_change fields (element, inputName "
                "required)",
            ),
        ],
    )
    def test_refused(
        self,
        post: Any,
        stored_events: Any,
        event_type: str,
        properties: str | None,
        message: str,
    ) -> None:
        fields = {"type": event_type}
        if properties is not None:
            fields["properties"] = properties
        response = post(**fields)
        assert response.status_code == 400
        assert response.get_json()["details"]["fieldErrors"] == {"properties": [message]}
        assert stored_events() == []


class TestTrackingConfig:
    def test_rybbits_shape_with_rybbits_defaults(
        self, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        response = client.get(f"/api/site/tracking-config/{site['site_id']}")
        assert response.status_code == 200
        assert response.get_json() == {
            "type": "web",
            "sessionReplay": False,
            "webVitals": False,
            "trackErrors": False,
            "trackOutbound": True,
            "trackUrlParams": True,
            "trackInitialPageView": True,
            "trackSpaNavigation": True,
            "trackButtonClicks": False,
            "trackCopy": False,
            "trackFormInteractions": False,
            "persistentClientIds": False,
        }

    def test_the_sites_settings_decide(
        self, app: Flask, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        set_settings(
            app,
            site,
            {"settings": {"web_vitals": True, "track_outbound": False, "track_copy": True}}[
                "settings"
            ],
        )
        config = client.get(f"/site/tracking-config/0{site['site_id']}").get_json()
        assert (config["webVitals"], config["trackOutbound"], config["trackCopy"]) == (
            True,
            False,
            True,
        )

    def test_an_unknown_site_is_404(self, client: FlaskClient) -> None:
        response = client.get("/api/site/tracking-config/999")
        assert response.status_code == 404
        assert response.get_json() == {"success": False, "error": "Site not found"}


class TestIdentify:
    def identify(self, client: FlaskClient, site: dict[str, Any], **fields: Any) -> Any:
        body = {"site_id": site["site_id"], "user_id": "user-42", **fields}
        return client.post("/api/identify", json=body, headers=PAGE)

    def test_later_anonymous_events_of_the_visitor_carry_the_user_id(
        self, client: FlaskClient, site: dict[str, Any], send: Any, stored_events: Any
    ) -> None:
        send(pathname="/before")
        response = self.identify(client, site, traits={"plan": "pro"}, is_new_identify=True)
        assert response.status_code == 200
        assert response.get_json() == {"success": True}
        send(pathname="/after")
        send({"Origin": "https://example.com", "User-Agent": "Other/1.0"}, pathname="/other")
        before, after, other = stored_events()
        assert before.get("anonymous") is True
        assert after["user_id"] == "user-42"
        assert after["anonymous_id"] == before["user_id"]
        assert "anonymous" not in after
        assert other.get("anonymous") is True  # another visitor (another user agent)
        assert other["user_id"] != before["user_id"]

    def test_traits_merge_and_null_removes_one(
        self, app: Flask, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        self.identify(client, site, traits={"plan": "pro", "seats": 3, "": "empty key"})
        self.identify(client, site, traits={"plan": None, "team": "a"}, is_new_identify=False)
        with app.app_context():
            profile = aliases.find_profile(get_store(), site["site_id"], "user-42")
        assert profile is not None
        assert profile["traits"] == {"seats": 3, "": "empty key", "team": "a"}

    def test_set_traits_alone_links_no_visitor(
        self, client: FlaskClient, site: dict[str, Any], send: Any, stored_events: Any
    ) -> None:
        self.identify(client, site, traits={"a": 1}, is_new_identify=False)
        send()
        (event,) = stored_events()
        assert event.get("anonymous") is True

    @pytest.mark.parametrize(
        ("fields", "errors"),
        [
            ({"user_id": ...}, {"user_id": ["Required"]}),
            ({"user_id": "  "}, {"user_id": ["String must contain at least 1 character(s)"]}),
            ({"user_id": "u" * 256}, {"user_id": ["String must contain at most 255 character(s)"]}),
            ({"traits": ["a"]}, {"traits": ["Expected object, received array"]}),
            (
                {"traits": {"a": "x" * 2100}},
                {"traits": ["Traits must be less than 2048 bytes (2KB)"]},
            ),
            (
                {"is_new_identify": "yes"},
                {"is_new_identify": ["Expected boolean, received string"]},
            ),
            ({"site_id": ...}, {"site_id": ["Required"]}),
        ],
    )
    def test_bad_bodies_are_400(
        self, client: FlaskClient, site: dict[str, Any], fields: dict[str, Any], errors: Any
    ) -> None:
        body = {"site_id": site["site_id"], "user_id": "user-42", **fields}
        body = {k: v for k, v in body.items() if v is not ...}
        response = client.post("/api/identify", json=body, headers=PAGE)
        assert response.status_code == 400
        assert response.get_json() == {
            "success": False,
            "error": "Invalid payload",
            "details": {"fieldErrors": errors, "formErrors": []},
        }

    def test_unknown_keys_are_ignored_as_rybbit_does(
        self, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        assert self.identify(client, site, anonymous_id="x", extra=1).status_code == 200

    def test_a_foreign_origin_is_403(self, client: FlaskClient, site: dict[str, Any]) -> None:
        response = client.post(
            "/api/identify",
            json={"site_id": site["site_id"], "user_id": "u"},
            headers={"Origin": "https://evil.net"},
        )
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Origin not allowed"}

    def test_a_server_identifies_with_its_key_for_the_visitor_it_names(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, post: Any, stored_events: Any
    ) -> None:
        body = {"site_id": site["site_id"], "user_id": "u"}
        bearer = {"Authorization": f"Bearer {api_key}", "User-Agent": "WordPress/6.5"}
        assert client.post("/api/identify", json=body, headers=bearer).status_code == 200
        visitor = {"ip_address": "203.0.113.5", "user_agent": CHROME}
        named = client.post("/api/identify", json={**body, **visitor}, headers=bearer)
        assert named.status_code == 200
        # The visitor's keyless event is theirs; a keyless identify cannot name another one.
        client.post(
            "/api/identify",
            json={**body, "user_id": "intruder", **visitor},
            headers={**PAGE, "User-Agent": "Other/1"},
        )
        response = client.post(
            "/api/track",
            json={"site_id": site["site_id"]},
            headers=PAGE,
            environ_base={"REMOTE_ADDR": "203.0.113.5"},
        )
        assert response.status_code == 200
        (event,) = stored_events()
        assert event["user_id"] == "u"
        bad = client.post("/api/identify", json=body, headers={"Authorization": "Bearer rb_nope"})
        assert bad.status_code == 403

    def test_the_aliases_enricher_runs_before_sessions(self, app: Flask) -> None:
        names = [e.name for e in app.extensions[RUNNER_KEY].enrichers]
        assert names.index("identity") < names.index("aliases") < names.index("sessions")


class TestCors:
    @pytest.mark.parametrize(
        "path", ["/api/track", "/track", "/api/identify", "/api/site/tracking-config/1"]
    )
    def test_browser_routes_echo_the_origin_with_credentials(
        self, client: FlaskClient, path: str
    ) -> None:
        response = client.options(
            path,
            headers={
                "Origin": "https://www.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]

    def test_answers_carry_them_too_even_a_refusal(
        self, send: Any, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        for response in (
            send(),
            send({"Origin": "https://evil.net"}),
            client.get(f"/api/site/tracking-config/{site['site_id']}", headers=PAGE),
        ):
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert response.headers["Access-Control-Allow-Origin"] == "https://www.example.com"

    @pytest.mark.parametrize("path", ["/api/track", "/track", "/api/track/batch", "/api/identify"])
    def test_no_cors_headers_without_an_origin(
        self, client: FlaskClient, site: dict[str, Any], path: str
    ) -> None:
        """A server-side client sends no Origin: on the browser routes Flask-CORS adds nothing
        (its hook is skipped for /api/track, track.py); the batch route's open policy still
        says * (Flask-CORS's always_send); with an Origin each route echoes it."""
        body: Any = {"site_id": site["site_id"], "type": "pageview", "pathname": "/"}
        body = [body] if path.endswith("batch") else body
        plain = client.post(path, json=body)
        cors = [h for h in plain.headers.keys() if h.startswith("Access-Control") or h == "Vary"]
        if path.endswith("batch"):
            assert plain.headers["Access-Control-Allow-Origin"] == "*"
        else:
            assert not cors
        crossed = client.post(path, json=body, headers={"Origin": "https://www.example.com"})
        assert crossed.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
        assert "Origin" in crossed.headers["Vary"]

    def test_batch_stays_open_without_credentials_and_admin_same_origin(
        self, client: FlaskClient
    ) -> None:
        preflight = {
            "Origin": "https://www.example.com",
            "Access-Control-Request-Method": "POST",
        }
        batch = client.options("/api/track/batch", headers=preflight)
        assert batch.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
        assert "Access-Control-Allow-Credentials" not in batch.headers
        admin = client.options("/api/admin/sites", headers=preflight)
        assert "Access-Control-Allow-Origin" not in admin.headers


class TestKeylessRateLimit:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_config, "KEYLESS_RATE_LIMIT": "2 per minute", "RATE_LIMIT": "3 per minute"}

    def test_per_ip_and_shared_by_track_and_identify(
        self, client: FlaskClient, site: dict[str, Any], send: Any
    ) -> None:
        assert send().status_code == 200
        identify = client.post(
            "/api/identify", json={"site_id": site["site_id"], "user_id": "u"}, headers=PAGE
        )
        assert identify.status_code == 200
        limited = send()
        assert limited.status_code == 429
        assert limited.get_json() == {
            "success": False,
            "error": "Rate limit exceeded. Maximum 2 requests per minute per IP address.",
        }
        other_ip = client.post(
            "/api/track",
            json={"site_id": site["site_id"]},
            headers=PAGE,
            environ_base={"REMOTE_ADDR": "198.51.100.7"},
        )
        assert other_ip.status_code == 200

    def test_keyed_requests_keep_their_own_budget(self, send: Any, post: Any) -> None:
        assert [send().status_code for _ in range(3)] == [200, 200, 429]
        assert [post().status_code for _ in range(4)] == [200, 200, 200, 429]

    def test_refused_origins_spend_nothing(self, send: Any) -> None:
        for _ in range(3):
            assert send({"Origin": "https://evil.net"}).status_code == 403
        assert send().status_code == 200


class TestAdminSettings:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_config, "ADMIN_TOKEN": ADMIN_TOKEN}

    def test_allowed_origins_are_stored_canonical(
        self, client: FlaskClient, site: dict[str, Any]
    ) -> None:
        headers = ADMIN
        response = client.patch(
            f"/api/admin/sites/{site['site_id']}",
            json={
                "settings": {"allowed_origins": ["HTTPS://Partner.NET:443/", "http://[::1]:8000"]}
            },
            headers=headers,
        )
        assert response.status_code == 200, response.get_json()
        settings = response.get_json()["settings"]
        assert settings["allowed_origins"] == ["https://partner.net", "http://[::1]:8000"]
        assert settings["web_vitals"] is False

    @pytest.mark.parametrize(
        "origin", ["partner.net", "https://partner.net/page", "ftp://partner.net", "null", ""]
    )
    def test_what_is_not_an_origin_is_refused(
        self,
        client: FlaskClient,
        site: dict[str, Any],
        origin: str,
    ) -> None:
        response = client.patch(
            f"/api/admin/sites/{site['site_id']}",
            json={"settings": {"allowed_origins": [origin]}},
            headers=ADMIN,
        )
        assert response.status_code == 400
        assert response.get_json()["details"]["fieldErrors"] == {
            "settings.allowed_origins.0": [
                "Invalid origin: give scheme, host and optional port only"
            ]
        }


def set_settings(app: Flask, site: dict[str, Any], settings: dict[str, Any]) -> None:
    """Change the site's settings and forget the cached site document, as the admin API does."""
    with app.app_context():
        sites.update_site(get_store(), site["site_id"], {"settings": settings})
        lookup_cache(app).clear()

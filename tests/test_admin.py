"""The admin API: authentication, sites, settings honoured by /api/track, keys, events."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import create_app
from tests.conftest import add_enricher

TOKEN = "test-admin-token-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app_config(mongo_uri: str | None) -> dict[str, Any]:
    return {
        "TESTING": True,
        "MONGO_URI": mongo_uri,
        "ADMIN_TOKEN": TOKEN,
        "KEY_USAGE_FLUSH_SECONDS": 0,
    }


class Admin:
    """The admin API through the test client, authenticated."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def __call__(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None:
            kwargs["json"] = body
        kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
        return self.client.open(f"/api/admin{path}", method=method, **kwargs)

    def site(self, **fields: Any) -> dict[str, Any]:
        response = self("POST", "/sites", {"name": "Shop", "domain": "shop.example", **fields})
        assert response.status_code == 201, response.get_json()
        return dict(response.get_json())

    def key(self, site_id: str, **fields: Any) -> dict[str, Any]:
        response = self("POST", f"/sites/{site_id}/api-keys", fields)
        assert response.status_code == 201, response.get_json()
        return dict(response.get_json())


@pytest.fixture
def admin(client: FlaskClient) -> Admin:
    return Admin(client)


def track(client: FlaskClient, key: dict[str, Any], **fields: Any) -> Any:
    return client.post(
        "/api/track", json={"api_key": key["api_key"], "site_id": key["site_id"], **fields}
    )


def events_of(admin: Admin, site_id: str, **params: Any) -> list[dict[str, Any]]:
    response = admin("GET", f"/sites/{site_id}/events", query_string={"limit": 1000, **params})
    assert response.status_code == 200, response.get_json()
    return list(response.get_json()["events"])


class TestAuthentication:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong-token-0123456789"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer "},
        ],
    )
    def test_missing_or_wrong_token_is_401(
        self, client: FlaskClient, headers: dict[str, str]
    ) -> None:
        response = client.get("/api/admin/sites", headers=headers)
        assert response.status_code == 401
        assert response.get_json() == {"success": False, "error": "Unauthorized"}
        assert response.headers["WWW-Authenticate"] == "Bearer"

    def test_api_key_is_not_an_admin_credential(self, admin: Admin, client: FlaskClient) -> None:
        key = admin.key(admin.site()["site_id"])
        response = client.get(
            "/api/admin/sites", headers={"Authorization": f"Bearer {key['api_key']}"}
        )
        assert response.status_code == 401

    def test_admin_token_is_not_an_api_key(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        response = client.post("/api/track", json={"api_key": TOKEN, "site_id": site["site_id"]})
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Invalid API key"}

    @pytest.mark.parametrize("token", [None, "", "t0k3n-9x", "x" * 31, " " * 40, "rb_" + "0" * 32])
    def test_admin_api_is_off_without_a_usable_token(
        self, instance_path: Any, token: str | None, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        app = create_app({"MONGO_URI": None, "ADMIN_TOKEN": token})
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = app.test_client().get("/api/admin/sites", headers=headers)
        assert response.status_code == 403
        assert response.get_json() == {"success": False, "error": "Admin API disabled"}
        assert any("admin API disabled" in r.getMessage() for r in caplog.records)
        if token:
            assert all(token not in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize("configured", [f"  {TOKEN}", f"{TOKEN}\n", f"\t{TOKEN} "])
    def test_a_configured_token_is_used_without_surrounding_white_space(
        self, instance_path: Any, configured: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = create_app({"MONGO_URI": None, "ADMIN_TOKEN": configured})
        response = app.test_client().get(
            "/api/admin/sites", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200
        assert any("white space" in r.getMessage() for r in caplog.records)
        assert all(TOKEN not in r.getMessage() for r in caplog.records)


class TestSites:
    def test_create_returns_the_site(self, admin: Admin) -> None:
        site = admin.site(name="My Shop", domain="Shop.Example.")
        assert (
            site["site_id"] == "1"
            and site["name"] == "My Shop"
            and site["domain"] == "shop.example"
        )
        assert site["settings"] == {
            "block_bots": True,
            "excluded_ips": [],
            "excluded_countries": [],
            "salt_user_ids": False,
            "track_ip": False,
            "allowed_origins": [],
            "track_initial_pageview": True,
            "track_spa_navigation": True,
            "track_url_params": True,
            "track_outbound": True,
            "web_vitals": False,
            "track_errors": False,
            "track_button_clicks": False,
            "track_copy": False,
            "track_form_interactions": False,
        }
        assert site["created_at"].endswith("Z")

    @pytest.mark.parametrize(
        ("body", "field", "message"),
        [
            ({"domain": "a.example"}, "name", "Required"),
            ({"name": "x"}, "domain", "Required"),
            (
                {"name": "", "domain": "a.example"},
                "name",
                "String must contain at least 1 character(s)",
            ),
            ({"name": "x", "domain": "not a domain"}, "domain", "Invalid domain"),
            (
                {"name": "x", "domain": "a.example", "settings": {"track_ip": "yes"}},
                "settings.track_ip",
                "Expected boolean",
            ),
            (
                {
                    "name": "x",
                    "domain": "a.example",
                    "settings": {"excluded_ips": ["10.0.0.0/8", "nope"]},
                },
                "settings.excluded_ips.1",
                "Invalid IP address, CIDR range or address range (first-last)",
            ),
            (
                {"name": "x", "domain": "a.example", "settings": {"excluded_countries": ["USA"]}},
                "settings.excluded_countries.0",
                "Invalid ISO 3166-1 alpha-2 country code",
            ),
            (
                {"name": "x", "domain": "a.example", "settings": {"colour": "red"}},
                "settings.colour",
                "Unrecognized key",
            ),
        ],
    )
    def test_create_validates(
        self, admin: Admin, body: dict[str, Any], field: str, message: str
    ) -> None:
        response = admin("POST", "/sites", body)
        assert response.status_code == 400
        payload = response.get_json()
        assert payload["error"] == "Invalid payload"
        assert payload["details"]["fieldErrors"][field] == [message]

    def test_create_refuses_unknown_fields_and_bad_bodies(self, admin: Admin) -> None:
        response = admin("POST", "/sites", {"name": "x", "domain": "a.example", "owner": "me"})
        assert response.get_json()["details"]["formErrors"] == [
            "Unrecognized key(s) in object: 'owner'"
        ]
        response = admin("POST", "/sites", data="{", content_type="application/json")
        assert response.status_code == 400 and response.get_json()["error"] == "Invalid payload"

    def test_list_get_patch(self, admin: Admin) -> None:
        one, two = admin.site(name="One"), admin.site(name="Two")
        listed = admin("GET", "/sites").get_json()["sites"]
        assert [s["site_id"] for s in listed] == [one["site_id"], two["site_id"]]
        assert admin("GET", f"/sites/{two['site_id']}").get_json()["name"] == "Two"

        response = admin(
            "PATCH",
            f"/sites/{one['site_id']}",
            {"name": "Renamed", "settings": {"excluded_countries": ["de"]}},
        )
        assert response.status_code == 200
        patched = response.get_json()
        assert patched["name"] == "Renamed" and patched["domain"] == "shop.example"
        assert patched["settings"]["excluded_countries"] == ["DE"]
        assert patched["settings"]["block_bots"] is True, "other settings are kept"

    def test_empty_patch_is_invalid(self, admin: Admin) -> None:
        site = admin.site()
        response = admin("PATCH", f"/sites/{site['site_id']}", {})
        assert response.status_code == 400
        assert response.get_json()["details"]["formErrors"] == [
            "Nothing to update: give name, domain, settings or time_zone"
        ]

    @pytest.mark.parametrize(
        ("method", "body"), [("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)]
    )
    def test_unknown_site_is_404(self, admin: Admin, method: str, body: Any) -> None:
        response = admin(method, "/sites/404", body)
        assert response.status_code == 404
        assert response.get_json() == {"success": False, "error": "Site not found"}

    def test_delete_revokes_keys_deletes_events_and_never_reuses_the_id(
        self, admin: Admin, client: FlaskClient
    ) -> None:
        site = admin.site()
        key = admin.key(site["site_id"])
        assert track(client, key).status_code == 200
        assert admin("DELETE", f"/sites/{site['site_id']}").get_json() == {
            "success": True,
            "site_id": site["site_id"],
            "events_deleted": 1,
        }
        assert admin("GET", f"/sites/{site['site_id']}").status_code == 404
        assert admin("GET", "/sites").get_json()["sites"] == []
        assert track(client, key).status_code == 404
        # Deleting it again deletes what arrived since (nothing here): test_site_deletion.py.
        assert admin("DELETE", f"/sites/{site['site_id']}").get_json()["events_deleted"] == 0

        again = admin.site()
        assert again["site_id"] != site["site_id"]
        # The old key stays dead even if someone aims it at the new site.
        assert track(client, {**key, "site_id": again["site_id"]}).status_code == 403


class TestSettingsOnTrack:
    @pytest.mark.parametrize(
        "excluded", [["203.0.113.7"], ["203.0.113.0/24"], ["2001:db8::/32", "203.0.113.7"]]
    )
    def test_excluded_ips_are_not_stored(
        self, admin: Admin, client: FlaskClient, excluded: list[str]
    ) -> None:
        site = admin.site(settings={"excluded_ips": excluded})
        key = admin.key(site["site_id"])
        response = track(client, key, ip_address="203.0.113.7")
        assert response.status_code == 200
        assert response.get_json() == {
            "success": True,
            "message": "Event not tracked - IP excluded",
        }
        assert track(client, key, ip_address="198.51.100.1").get_json() == {"success": True}
        assert len(events_of(admin, site["site_id"])) == 1

    def test_socket_address_is_used_without_a_body_ip(
        self, admin: Admin, client: FlaskClient
    ) -> None:
        site = admin.site(settings={"excluded_ips": ["127.0.0.1"]})
        key = admin.key(site["site_id"])
        assert track(client, key).get_json()["message"] == "Event not tracked - IP excluded"

    def test_setting_changes_apply_at_once(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        key = admin.key(site["site_id"])
        assert track(client, key, ip_address="192.0.2.1").get_json() == {"success": True}
        admin(
            "PATCH", f"/sites/{site['site_id']}", {"settings": {"excluded_ips": ["192.0.2.0/24"]}}
        )
        assert "message" in track(client, key, ip_address="192.0.2.1").get_json()
        admin("PATCH", f"/sites/{site['site_id']}", {"settings": {"excluded_ips": []}})
        assert track(client, key, ip_address="192.0.2.1").get_json() == {"success": True}

    def test_track_ip_keeps_the_address(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        key = admin.key(site["site_id"])
        track(client, key, ip_address="2001:db8::5")
        admin("PATCH", f"/sites/{site['site_id']}", {"settings": {"track_ip": True}})
        track(client, key, ip_address="2001:db8::6")
        track(client, key)
        stored = events_of(admin, site["site_id"], order="asc")
        assert [e.get("ip_address") for e in stored] == [None, "2001:db8::6", "127.0.0.1"]

    def test_salt_user_ids_stores_a_stable_keyed_hash(
        self, admin: Admin, client: FlaskClient
    ) -> None:
        one = admin.site(settings={"salt_user_ids": True})
        two = admin.site(settings={"salt_user_ids": True})
        key_one, key_two = admin.key(one["site_id"]), admin.key(two["site_id"])
        for _ in range(2):
            track(client, key_one, user_id="alice@example.com")
        track(client, key_two, user_id="alice@example.com")
        first = {e["user_id"] for e in events_of(admin, one["site_id"])}
        second = {e["user_id"] for e in events_of(admin, two["site_id"])}
        assert len(first) == 1 and "alice@example.com" not in first
        assert len(next(iter(first))) == 32
        assert first != second, "each site has its own secret"
        assert "user_id_salt" not in admin("GET", f"/sites/{one['site_id']}").get_json()

    @pytest.mark.parametrize(
        ("field", "value", "setting", "reason"),
        [
            ("country", "DE", {"excluded_countries": ["DE"]}, "country excluded"),
        ],
    )
    def test_enrichment_driven_exclusions(
        self,
        app: Flask,
        admin: Admin,
        client: FlaskClient,
        field: str,
        value: Any,
        setting: dict[str, Any],
        reason: str,
    ) -> None:
        add_enricher(app, "test_setter", lambda event, context: event.__setitem__(field, value))
        site = admin.site(settings=setting)
        key = admin.key(site["site_id"])
        assert track(client, key).get_json() == {
            "success": True,
            "message": f"Event not tracked - {reason}",
        }
        assert events_of(admin, site["site_id"]) == []
        off = {name: ([] if isinstance(v, list) else False) for name, v in setting.items()}
        admin("PATCH", f"/sites/{site['site_id']}", {"settings": off})
        assert track(client, key).get_json() == {"success": True}


class TestKeys:
    def test_create_shows_the_key_once_and_list_never(
        self, admin: Admin, client: FlaskClient
    ) -> None:
        site = admin.site()
        created = admin.key(site["site_id"], name="backend")
        assert set(created) >= {"id", "api_key", "prefix", "name", "created_at"}
        assert created["api_key"].startswith(created["prefix"]) and created["name"] == "backend"
        second = admin.key(site["site_id"])
        listed = admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"]
        # Oldest first; two keys made in the same millisecond may list in either order.
        assert sorted(k["id"] for k in listed) == sorted([created["id"], second["id"]])
        assert [k["created_at"] for k in listed] == sorted(k["created_at"] for k in listed)
        for entry in listed:
            assert set(entry) == {
                "id",
                "prefix",
                "name",
                "site_id",
                "created_at",
                "last_used_at",
                "revoked_at",
                "expires_at",
                "scopes",
            }
        text = json.dumps(listed)
        assert created["api_key"] not in text and second["api_key"] not in text
        assert (
            track(client, created).status_code == 200 and track(client, second).status_code == 200
        )

    def test_create_without_body_and_with_expiry(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        response = admin("POST", f"/sites/{site['site_id']}/api-keys")
        assert response.status_code == 201 and response.get_json()["name"] is None
        expired = admin.key(site["site_id"], expires_at="2020-01-01T00:00:00Z")
        assert track(client, expired).status_code == 403

    @pytest.mark.ack_store
    def test_last_used_at_is_recorded(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        key = admin.key(site["site_id"])
        assert (
            admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"][0][
                "last_used_at"
            ]
            is None
        )
        track(client, key)
        used = admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"][0][
            "last_used_at"
        ]
        assert used is not None and used.endswith("Z")

    def test_revoke_is_immediate(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        key = admin.key(site["site_id"])
        assert track(client, key).status_code == 200
        response = admin("DELETE", f"/sites/{site['site_id']}/api-keys/{key['id']}")
        assert response.status_code == 200 and response.get_json()["revoked_at"] is not None
        assert track(client, key).status_code == 403

    def test_revoke_unknown_or_foreign_key_is_404(self, admin: Admin) -> None:
        one, two = admin.site(), admin.site()
        key = admin.key(one["site_id"])
        response = admin("DELETE", f"/sites/{two['site_id']}/api-keys/{key['id']}")
        assert response.status_code == 404
        assert response.get_json() == {"success": False, "error": "API key not found"}

    def test_rotate_with_grace_keeps_both_working(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        old = admin.key(site["site_id"], name="app")
        response = admin(
            "POST", f"/sites/{site['site_id']}/api-keys/{old['id']}/rotate", {"grace_seconds": 3600}
        )
        assert response.status_code == 201
        new = response.get_json()
        assert (
            new["api_key"] != old["api_key"]
            and new["name"] == "app"
            and new["replaces"] == old["id"]
        )
        assert track(client, old).status_code == 200 and track(client, new).status_code == 200
        listed = {
            k["id"]: k
            for k in admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"]
        }
        assert listed[old["id"]]["expires_at"] == new["replaced_key_expires_at"]

    def test_rotate_without_grace_ends_the_old_key(self, admin: Admin, client: FlaskClient) -> None:
        site = admin.site()
        old = admin.key(site["site_id"])
        new = admin(
            "POST", f"/sites/{site['site_id']}/api-keys/{old['id']}/rotate", {"grace_seconds": 0}
        ).get_json()
        assert track(client, old).status_code == 403 and track(client, new).status_code == 200
        again = admin(
            "POST", f"/sites/{site['site_id']}/api-keys/{old['id']}/rotate", {"grace_seconds": 0}
        )
        assert again.status_code == 404, "an ended key cannot be rotated again"

    @pytest.mark.parametrize("grace", [-1, 1.5, "60", 31 * 24 * 3600])
    def test_rotate_validates_grace(self, admin: Admin, grace: Any) -> None:
        site = admin.site()
        key = admin.key(site["site_id"])
        response = admin(
            "POST",
            f"/sites/{site['site_id']}/api-keys/{key['id']}/rotate",
            {"grace_seconds": grace},
        )
        assert response.status_code == 400
        assert "grace_seconds" in response.get_json()["details"]["fieldErrors"]

    def test_keys_of_unknown_site_is_404(self, admin: Admin) -> None:
        assert admin("GET", "/sites/77/api-keys").status_code == 404
        assert admin("POST", "/sites/77/api-keys", {}).status_code == 404


class TestEvents:
    @pytest.fixture
    def filled(self, admin: Admin, client: FlaskClient) -> dict[str, Any]:
        site = admin.site()
        key = admin.key(site["site_id"])
        for i in range(7):
            fields: dict[str, Any] = {"pathname": f"/{i}"}
            if i % 3 == 0:
                fields.update(type="custom_event", event_name="click")
            assert track(client, key, **fields).status_code == 200
        return site

    def test_pages_newest_first(self, admin: Admin, filled: dict[str, Any]) -> None:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            body = admin(
                "GET", f"/sites/{filled['site_id']}/events", query_string=params
            ).get_json()
            seen += [e["pathname"] for e in body["events"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"/{i}" for i in reversed(range(7))]

    def test_filters(self, admin: Admin, filled: dict[str, Any]) -> None:
        customs = events_of(admin, filled["site_id"], type="custom_event")
        assert [e["pathname"] for e in customs] == ["/6", "/3", "/0"]
        everything = events_of(admin, filled["site_id"], order="asc")
        middle = everything[3]["timestamp"]
        later = events_of(admin, filled["site_id"], **{"from": middle})
        assert all(e["timestamp"] >= middle for e in later) and len(later) >= 4
        earlier = events_of(admin, filled["site_id"], to=middle)
        assert all(e["timestamp"] < middle for e in earlier)
        assert len(earlier) + len(later) == 7

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 0},
            {"limit": 1001},
            {"limit": "x"},
            {"from": "yesterday"},
            {"type": "nope"},
            {"order": "up"},
            {"cursor": "abc"},
            {"colour": "x"},
        ],
    )
    def test_bad_query_is_400(
        self, admin: Admin, filled: dict[str, Any], params: dict[str, Any]
    ) -> None:
        response = admin("GET", f"/sites/{filled['site_id']}/events", query_string=params)
        assert response.status_code == 400 and response.get_json()["error"] == "Invalid payload"

    def test_ndjson_streams_the_whole_range(self, admin: Admin, filled: dict[str, Any]) -> None:
        response = admin(
            "GET",
            f"/sites/{filled['site_id']}/events",
            query_string={"limit": 2, "order": "asc"},
            headers={"Accept": "application/x-ndjson"},
        )
        assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
        lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
        assert [e["pathname"] for e in lines] == [f"/{i}" for i in range(7)]


def test_secrets_never_reach_the_logs(
    admin: Admin, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    site = admin.site()
    key = admin.key(site["site_id"])
    track(client, key)
    track(client, {**key, "site_id": "999"})
    client.get("/api/admin/sites", headers={"Authorization": f"Bearer {key['api_key']}"})
    client.get("/api/admin/sites", headers={"Authorization": f"Bearer {TOKEN}x"})
    admin("DELETE", f"/sites/{site['site_id']}/api-keys/{key['id']}")
    track(client, key)
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert key["api_key"] not in text and TOKEN not in text


@pytest.mark.parametrize(
    "cursor",
    [
        "1_" + "a" * 24 + "_zz",
        "9" * 20 + "_" + "a" * 24,
        "9" * 5000 + "_" + "a" * 24,
        "\u0661_" + "a" * 24,
    ],
)
def test_malformed_cursors_are_400(admin: Admin, cursor: str) -> None:
    site = admin.site()
    response = admin("GET", f"/sites/{site['site_id']}/events", query_string={"cursor": cursor})
    assert response.status_code == 400 and response.get_json()["error"] == "Invalid payload"


def test_cursor_with_a_trailing_newline_is_400(admin: Admin) -> None:
    site = admin.site()
    response = admin(
        "GET", f"/sites/{site['site_id']}/events", query_string={"cursor": "1_" + "a" * 24 + "\n"}
    )
    assert response.status_code == 400


@pytest.mark.ack_store
def test_usage_held_back_by_the_interval_is_written_by_flush(
    instance_path: Any, mongo_uri: str | None
) -> None:
    from rybbit.store import get_store
    from rybbit.track import usage_recorder

    app = create_app(
        {
            "MONGO_URI": mongo_uri,
            "ADMIN_TOKEN": TOKEN,
            "KEY_USAGE_FLUSH_SECONDS": 3600,
            "LOAD_PLUGINS": [],
        }
    )
    admin = Admin(app.test_client())
    site = admin.site()
    key = admin.key(site["site_id"])
    track(app.test_client(), key)  # the first use is written at once
    first = admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"][0][
        "last_used_at"
    ]
    time.sleep(0.01)
    track(app.test_client(), key)  # held back: the interval has not passed
    assert (
        admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"][0]["last_used_at"]
        == first
    )
    with app.app_context():
        usage_recorder(app).flush(get_store(app))
    later = admin("GET", f"/sites/{site['site_id']}/api-keys").get_json()["api_keys"][0][
        "last_used_at"
    ]
    assert later > first


def test_first_use_is_written_at_once_on_a_just_booted_machine(
    app: Flask, site: dict[str, Any], api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """time.monotonic() counts from boot: a machine up for a few seconds must not hold back a
    key's first use until it has been up for the flush interval."""
    from rybbit import keys
    from rybbit.store import get_store

    monkeypatch.setattr(keys.time, "monotonic", lambda: 5.0)
    recorder = keys.UsageRecorder(interval_seconds=3600)
    with app.app_context():
        store = get_store(app)
        key_id = keys.find_key(store, api_key)["_id"]
        recorder.touch(store, key_id, keys.datetime.now(keys.UTC))
        assert keys.find_key(store, api_key)["last_used_at"] is not None

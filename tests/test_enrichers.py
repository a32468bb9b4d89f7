"""The built-in enrichers, each observed through real HTTP requests and stored events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugins.identity import SALT_LIFETIME
from plugins.screen import device_type_from_screen
from rybbit import create_app
from rybbit.store import get_store
from tests.conftest import age_sessions, all_events, sessions_storage, set_sessions_last_seen
from tests.geo_db import build_city_db


@pytest.fixture
def app_config(mongo_uri: str | None, instance_path: Path) -> dict[str, Any]:
    instance_path.mkdir(parents=True, exist_ok=True)
    build_city_db(instance_path / "GeoLite2-City.mmdb")
    return {"TESTING": True, "MONGO_URI": mongo_uri, "LOAD_PLUGINS": [], "RATE_LIMIT": "off"}


def last_event(stored_events: Any) -> dict[str, Any]:
    return dict(stored_events()[-1])


class TestGeo:
    @pytest.mark.parametrize(
        ("ip", "expected"),
        [
            (
                "81.2.69.160",
                {
                    "country": "GB",
                    "region": "GB-ENG",
                    "city": "London",
                    "lat": 51.5142,
                    "lon": -0.0931,
                    "timezone": "Europe/London",
                },
            ),
            (
                "89.160.20.120",
                {
                    "country": "SE",
                    "region": "SE-E",
                    "city": "Linköping",
                    "timezone": "Europe/Stockholm",
                },
            ),
            ("81.2.70.7", {"country": "GB", "region": "GB-ENG", "city": "Cambridge"}),
            ("2a02:cf40::1", {"country": "NO", "timezone": "Europe/Oslo"}),
            ("::ffff:81.2.69.160", {"country": "GB", "city": "London"}),
        ],
    )
    def test_public_addresses_are_located(
        self, post: Any, stored_events: Any, ip: str, expected: dict[str, Any]
    ) -> None:
        assert post(ip_address=ip).status_code == 200
        event = last_event(stored_events)
        for field, value in expected.items():
            assert event[field] == value, field
        if "city" not in expected:
            assert "city" not in event and "region" not in event

    @pytest.mark.parametrize(
        "ip", ["10.1.2.3", "192.168.1.1", "127.0.0.1", "::1", "fe80::1", "8.8.8.8"]
    )
    def test_private_reserved_and_unknown_addresses_get_no_geo(
        self, post: Any, stored_events: Any, ip: str
    ) -> None:
        assert post(ip_address=ip).status_code == 200
        event = last_event(stored_events)
        assert not {"country", "region", "city", "lat", "lon", "timezone"} & set(event)

    def test_socket_address_is_used_without_a_body_ip(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
    ) -> None:
        body = {"api_key": api_key, "site_id": site["site_id"]}
        client.post("/api/track", json=body, environ_base={"REMOTE_ADDR": "81.2.69.10"})
        assert last_event(stored_events)["country"] == "GB"

    @pytest.mark.ack_store
    def test_forwarded_for_is_trusted_only_through_configured_proxies(
        self, instance_path: Path, app_config: dict[str, Any]
    ) -> None:
        from rybbit import create_app, keys, sites

        def country_seen(trusted: int, forwarded: str) -> str | None:
            app = create_app({**app_config, "TRUSTED_PROXIES": trusted})
            with app.app_context():
                site = sites.create_site(get_store(), name="g", domain="g.example")
                key = keys.create_key(get_store(), site["site_id"])["api_key"]
            app.test_client().post(
                "/api/track",
                json={"api_key": key, "site_id": site["site_id"]},
                headers={"X-Forwarded-For": forwarded},
                environ_base={"REMOTE_ADDR": "10.0.0.1"},
            )
            with app.app_context():
                (event,) = all_events(get_store(), site["site_id"])
                return event.get("country")

        # The client wrote the leftmost entry itself; one proxy appended the real address.
        assert country_seen(1, "89.160.20.120, 81.2.69.160") == "GB"
        assert country_seen(2, "89.160.20.120, 81.2.69.160") == "SE"
        assert country_seen(0, "89.160.20.120, 81.2.69.160") is None  # socket address 10.0.0.1

    def test_country_exclusion_uses_geo(
        self, app: Flask, client: FlaskClient, post: Any, site: dict[str, Any], stored_events: Any
    ) -> None:
        from rybbit import sites

        with app.app_context():
            sites.update_site(
                get_store(), site["site_id"], {"settings": {"excluded_countries": ["GB"]}}
            )
        response = post(ip_address="81.2.69.160")
        assert response.get_json() == {
            "success": True,
            "message": "Event not tracked - country excluded",
        }
        assert post(ip_address="89.160.20.120").get_json() == {"success": True}
        assert [e["country"] for e in stored_events()] == ["SE"]


def test_geo_tells_global_addresses_as_ipaddress_does() -> None:
    """The IPv4 table behind lookup_address against ipaddress's own is_global: at every edge
    of the table, next to it, and at random addresses."""
    import ipaddress
    import random

    from plugins.geo import _GLOBAL_STARTS, lookup_address

    assert len(_GLOBAL_STARTS) > 10, "this Python's ipaddress still lists its networks"
    rng = random.Random(16)
    numbers = {n + d for n in _GLOBAL_STARTS for d in (-1, 0, 1) if 0 <= n + d < 2**32}
    numbers |= {rng.randrange(2**32) for _ in range(20_000)} | {2**32 - 1}
    for number in sorted(numbers):
        address = ipaddress.IPv4Address(number)
        expected = str(address) if address.is_global else None
        assert lookup_address(str(address)) == expected, address
    # Spellings other than ipaddress's own go to ipaddress, as before the table.
    assert lookup_address("::ffff:8.8.8.8") == "8.8.8.8"
    assert lookup_address("::ffff:10.0.0.1") is None
    assert lookup_address("2a02:cf40::1") == "2a02:cf40::1"
    for other in ("08.8.8.8", "8.8.8", "8.8.8.8 ", "8.8.8.8\x00", "256.1.1.1", "", "x"):
        assert lookup_address(other) is None, other


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0.0.0.0", 0),  # noqa: S104 (an address to read, not to bind)
        ("1.2.3.4", 0x01020304),
        ("255.255.255.255", 2**32 - 1),
        ("01.2.3.4", None),
        ("1.2.3", None),
        ("1.2.3.4.5", None),
        (" 1.2.3.4", None),
        ("1.2.3.4\x00", None),
        ("\u0661.2.3.4", None),
        ("::1", None),
        ("::ffff:1.2.3.4", None),
        ("", None),
    ],
)
def test_ipv4_number_takes_only_the_canonical_spelling(text: str, number: int | None) -> None:
    from rybbit.site_rules import ipv4_number

    assert ipv4_number(text) == number


def test_geo_without_database_is_disabled_not_broken(
    instance_path: Path, app_config: dict[str, Any]
) -> None:
    from rybbit import create_app

    (instance_path / "GeoLite2-City.mmdb").unlink()
    app = create_app({**app_config, "ADMIN_TOKEN": "t" * 32})
    report = {
        p["name"]: p
        for p in app.test_client()
        .get("/api/admin/plugins", headers={"Authorization": "Bearer " + "t" * 32})
        .get_json()["plugins"]
    }
    assert "no database at" in report["geo"]["status"] and report["geo"]["healthy"] is False


def test_geo_refuses_a_country_database(instance_path: Path, app_config: dict[str, Any]) -> None:
    from plugins.geo import GeoEnricher

    path = build_city_db(instance_path / "country.mmdb", database_type="GeoIP2-Country")
    enricher = GeoEnricher(str(path))
    assert enricher.reader is None and "not a City database" in (enricher.status() or "")


class TestUrlParams:
    def test_utm_fields_and_all_parameters(self, post: Any, stored_events: Any) -> None:
        query = "?utm_source=Newsletter&UTM_Medium=email&utm_campaign=launch&utm_term=t&utm_content=c&gclid=abc&x.y=1&$z=2&utm_source=second"
        assert post(querystring=query).status_code == 200
        event = last_event(stored_events)
        assert (event["utm_source"], event["utm_medium"], event["utm_campaign"]) == (
            "Newsletter",
            "email",
            "launch",
        )
        assert (event["utm_term"], event["utm_content"], event["gclid"]) == ("t", "c", "abc")
        assert event["url_parameters"]["utm_source"] == "Newsletter", "first value wins"
        assert (
            event["url_parameters"]["x\uff0ey"] == "1" and event["url_parameters"]["\uff04z"] == "2"
        )

    def test_events_with_one_querystring_get_parameters_of_their_own(
        self, client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
    ) -> None:
        query = "?utm_source=a&gclid=x&utm_source=b"
        item = {"api_key": api_key, "site_id": site["site_id"], "querystring": query}
        items = [item] * 3
        assert client.post("/api/track/batch", json=items).get_json()["accepted"] == 3
        stored = stored_events()
        assert [e["url_parameters"] for e in stored] == [{"utm_source": "a", "gclid": "x"}] * 3
        assert [(e["utm_source"], e["gclid"]) for e in stored] == [("a", "x")] * 3

    def test_parameters_are_not_shared_between_events(self) -> None:
        from plugins.url_params import UrlParamsEnricher

        enricher, query = UrlParamsEnricher(), "?utm_source=a&k=v"
        first, second = {"querystring": query}, {"querystring": query}
        enricher.enrich(first, None)  # type: ignore[arg-type]  # it reads no context
        first["url_parameters"]["k"] = "changed by a later enricher"
        enricher.enrich(second, None)  # type: ignore[arg-type]
        assert second["url_parameters"] == {"utm_source": "a", "k": "v"}
        assert second["utm_source"] == "a"

    @pytest.mark.parametrize("query", ["", "?", "?&&", "plain"])
    def test_no_parameters_no_fields(self, post: Any, stored_events: Any, query: str) -> None:
        assert post(querystring=query).status_code == 200
        event = last_event(stored_events)
        assert "utm_source" not in event
        if query != "plain":
            assert "url_parameters" not in event


class TestScreen:
    @pytest.mark.parametrize(
        ("size", "expected"),
        [
            ((390, 844), "Mobile"),
            ((844, 390), "Mobile"),
            ((360, 800), "Mobile"),
            ((768, 1024), "Tablet"),
            ((820, 1180), "Tablet"),
            ((1024, 1366), "Tablet"),
            ((1280, 800), "Desktop"),
            ((1920, 1080), "Desktop"),
            ((1366, 768), "Desktop"),
            ((2560, 1440), "Desktop"),
        ],
    )
    def test_device_type_from_screen(self, size: tuple[int, int], expected: str) -> None:
        assert device_type_from_screen(*size) == expected

    def test_screen_decides_only_when_the_user_agent_is_silent(
        self, post: Any, stored_events: Any
    ) -> None:
        post(user_agent="MyApp/1.0 (Linux; x64)", screenWidth=390, screenHeight=844)
        assert last_event(stored_events)["device_type"] == "Mobile"
        post(user_agent="MyApp/1.0 (Linux; x64)")
        assert last_event(stored_events)["device_type"] == "Unknown"
        desktop = (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36"
        )
        post(user_agent=desktop, screenWidth=390, screenHeight=844)
        assert last_event(stored_events)["device_type"] == "Desktop"
        event = last_event(stored_events)
        assert (event["screen_width"], event["screen_height"]) == (390, 844)


class TestIdentity:
    UA = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"

    def test_client_user_id_is_kept(self, post: Any, stored_events: Any) -> None:
        post(user_id="customer-7", ip_address="81.2.69.160")
        event = last_event(stored_events)
        assert event["user_id"] == "customer-7" and "anonymous" not in event

    def test_anonymous_id_is_stable_per_visitor_and_differs_between_visitors(
        self, post: Any, stored_events: Any
    ) -> None:
        for ip in ("81.2.69.160", "81.2.69.160", "81.2.69.161"):
            post(ip_address=ip, user_agent=self.UA)
        ids = [e["user_id"] for e in stored_events()]
        assert ids[0] == ids[1] != ids[2]
        assert all(e["anonymous"] is True and len(e["user_id"]) == 32 for e in stored_events())
        assert "81.2.69.160" not in json.dumps([e["user_id"] for e in stored_events()])

    @pytest.mark.parametrize(
        "parts",
        [("12", "81.2.69.160", UA), ("site", "2a02:cf40::1", "é \ud800 ua"), ("1", "", "")],
    )
    def test_anonymous_id_hashes_each_part_after_a_nul(self, parts: tuple[str, str, str]) -> None:
        """The id's definition, part by part, as ids already stored were made."""
        import hashlib

        from plugins.identity import anonymous_id

        salt = bytes(range(32))
        digest = hashlib.sha256(salt)
        for part in parts:
            digest.update(b"\x00" + part.encode("utf-8", "surrogatepass"))
        assert anonymous_id(salt, *parts) == digest.hexdigest()[:32]

    def test_salt_rotates_daily_and_is_destroyed_after_48_hours(
        self, app: Flask, post: Any, stored_events: Any
    ) -> None:
        post(ip_address="81.2.69.160", user_agent=self.UA)
        today_id = last_event(stored_events)["user_id"]
        with app.app_context():
            (salt,) = get_store().list_salts()
        assert salt["_id"] == datetime.now(UTC).strftime("%Y-%m-%d")

        from plugins.identity import IdentityEnricher
        from rybbit.plugin_loader import RUNNER_KEY

        (identity,) = [
            e for e in app.extensions[RUNNER_KEY].enrichers if isinstance(e, IdentityEnricher)
        ]
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        later = tomorrow + SALT_LIFETIME
        with app.app_context():
            store = get_store()
            tomorrows_salt = identity.salts.for_day(store, tomorrow)
            assert tomorrows_salt != bytes.fromhex(salt["salt"])
            identity.salts.for_day(store, later)
            remaining = {doc["_id"] for doc in store.list_salts()}
        assert salt["_id"] not in remaining, "a salt is gone 48 hours after it was made"
        assert today_id not in remaining


class TestSessions:
    @pytest.fixture
    def app_config(
        self, app_config: dict[str, Any], session_state: str, request: pytest.FixtureRequest
    ) -> dict[str, Any]:
        """With sessions in the store and in Redis alike."""
        return {**app_config, **sessions_storage(request, session_state)}

    def test_events_within_30_minutes_share_a_session(self, post: Any, stored_events: Any) -> None:
        for _ in range(3):
            post(user_id="u1")
        post(user_id="u2")
        events = stored_events()
        assert events[0]["session_id"] == events[1]["session_id"] == events[2]["session_id"]
        assert events[3]["session_id"] != events[0]["session_id"]

    @pytest.mark.ack_store
    def test_inactivity_ends_the_session(
        self,
        app: Flask,
        app_config: dict[str, Any],
        site: dict[str, Any],
        api_key: str,
        post: Any,
        stored_events: Any,
    ) -> None:
        post(user_id="u1")
        first = last_event(stored_events)["session_id"]
        age_sessions(app, datetime.now(UTC) - timedelta(minutes=31))
        # The next event reaches another worker (this one remembers the visitor's recent
        # event, which the store edit above cannot undo; test_sessions covers real waiting).
        other = create_app(app_config).test_client()
        body = {"api_key": api_key, "site_id": site["site_id"], "user_id": "u1"}
        assert other.post("/api/track", json=body).status_code == 200
        assert last_event(stored_events)["session_id"] != first
        assert other.post("/api/track", json=body).status_code == 200
        assert len({e["session_id"] for e in stored_events()}) == 2

    def test_sessions_are_per_site(
        self, app: Flask, client: FlaskClient, post: Any, stored_events: Any
    ) -> None:
        from rybbit import keys, sites

        with app.app_context():
            other = sites.create_site(get_store(), name="o", domain="o.example")
            key = keys.create_key(get_store(), other["site_id"])["api_key"]
        post(user_id="same")
        client.post(
            "/api/track", json={"api_key": key, "site_id": other["site_id"], "user_id": "same"}
        )
        a, b = stored_events()
        assert a["session_id"] != b["session_id"]


UA_TABLE = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Desktop",
        "Chrome",
        "124",
        "Windows",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Desktop",
        "Safari",
        "17",
        "macOS",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        "Desktop",
        "Firefox",
        "125",
        "Linux",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
        "Desktop",
        "Edge",
        "124",
        "Windows",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "Mobile",
        "Mobile Safari",
        "17",
        "iOS",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
        "Mobile",
        "Mobile Chrome",
        "124",
        "Android",
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
        "Tablet",
        "Mobile Safari",
        "16",
        "iOS",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Tablet",
        "Chrome",
        "120",
        "Android",
    ),
    (
        "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) 85.0.4183.93/6.0 TV Safari/537.36",
        "TV",
        None,
        None,
        "Tizen",
    ),
    (
        "Mozilla/5.0 (Linux; Android 9; AFTMM) AppleWebKit/537.36 (KHTML, like Gecko) Silk/102.2.1 like Chrome/102.0.5005.125 Safari/537.36",
        "TV",
        "Silk",
        "102",
        "Android",
    ),
    (
        "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0 Safari/605.1.15",
        "Console",
        None,
        None,
        None,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19041",
        "Console",
        "Edge",
        "18",
        "Xbox",
    ),
    (
        "Mozilla/5.0 (Linux; Android 11; SM-R890) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/96.0.4664.104 Mobile Safari/537.36",
        "Wearable",
        None,
        None,
        "Android",
    ),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Bot",
        None,
        None,
        None,
    ),
    ("MyApp/1.0 (Linux; x64)", "Unknown", None, None, "Linux"),
]


@pytest.mark.parametrize(
    ("ua", "device_type", "browser", "version", "os_family"),
    UA_TABLE,
    ids=[row[1] + "-" + row[0][:30] for row in UA_TABLE],
)
def test_device_fields_for_real_user_agents(
    app: Flask,
    post: Any,
    site: dict[str, Any],
    stored_events: Any,
    ua: str,
    device_type: str,
    browser: str | None,
    version: str | None,
    os_family: str | None,
) -> None:
    from rybbit import sites

    with app.app_context():  # let bots be stored so their fields can be read
        sites.update_site(get_store(), site["site_id"], {"settings": {"block_bots": False}})
    assert post(user_agent=ua).status_code == 200
    event = last_event(stored_events)
    assert event["device_type"] == device_type
    if browser:
        assert (event["browser"], event["browser_version"]) == (browser, version)
    if os_family:
        assert event["operating_system"] == os_family


def test_user_agent_header_is_used_without_a_body_one(
    client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    client.post(
        "/api/track",
        json={"api_key": api_key, "site_id": site["site_id"]},
        headers={"User-Agent": UA_TABLE[4][0]},
    )
    assert last_event(stored_events)["device_type"] == "Mobile"


# User agents that reach user-agents' rarer branches (Windows RT, Firefox OS, BlackBerry, Maemo,
# J2ME, Googlebot-Mobile, Silk on a Mac, ...) and markers of two kinds in one string.
EDGE_USER_AGENTS = [
    "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.2; ARM; Trident/6.0; Touch)",
    "Mozilla/5.0 (Windows RT 8.1; ARM) like Gecko",
    "Mozilla/4.0 (compatible; MSIE 5.5; Windows 98; Win 9x 4.90)",
    "Mozilla/4.0 (compatible; MSIE 5.0; Windows 95)",
    "Mozilla/5.0 (X11; SunOS sun4u; rv:60.0) Gecko/20100101 Firefox/60.0",
    "Mozilla/5.0 (Mobile; rv:26.0) Gecko/26.0 Firefox/26.0",
    "Mozilla/5.0 (Tablet; x) Gecko/18.0 Firefox/18.0 SeaMonkey/2.0",
    "Mozilla/5.0 (Android 14; Tablet; rv:124.0) Gecko/124.0 Firefox/124.0",
    "Mozilla/5.0 (Android 14; Mobile; rv:124.0) Gecko/124.0 Firefox/124.0",
    "Mozilla/5.0 (BlackBerry; U; BlackBerry 9800; en) AppleWebKit/534.1+ (KHTML, like Gecko) Version/6.0.0.141 Mobile Safari/534.1+",
    "Mozilla/5.0 (PlayBook; U; RIM Tablet OS 2.1.0; en-US) AppleWebKit/536.2+ (KHTML, like Gecko) Version/7.2.1.0 Safari/536.2+",
    "Mozilla/5.0 (compatible; MSIE 9.0; Windows Phone OS 7.5; Trident/5.0; IEMobile/9.0; NOKIA; Lumia 800)",
    "Mozilla/4.0 (compatible; MSIE 6.0; Windows CE; IEMobile 7.11)",
    "Mozilla/5.0 (SymbianOS/9.4; Series60/5.0 NokiaN97-1/12.0.024; Profile/MIDP-2.1 Configuration/CLDC-1.1; en-us) AppleWebKit/525 (KHTML, like Gecko) BrowserNG/7.1.12344",
    "Mozilla/5.0 (MeeGo; NokiaN9) AppleWebKit/534.13 (KHTML, like Gecko) NokiaBrowser/8.5.0 Mobile Safari/534.13",
    "Mozilla/5.0 (X11; U; Linux armv7l; en-GB; rv:1.9.2a1pre) Gecko/20090928 Firefox/3.5 Maemo Browser 1.4.1.22 RX-51 N900",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Maemo",
    "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (J2ME/22.478; U; en) Presto/2.5.25 Version/10.54",
    "SomeApp/1.0 (iPhone; iOS 17.0)",
    "SAMSUNG-SGH-E250/1.0 Profile/MIDP-2.0 Configuration/CLDC-1.1 UP.Browser/6.2.3.3.c.1.101 (GUI) MMP/2.0 (compatible; Googlebot-Mobile/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10_6_3; en-us; Silk/1.1.0-80) AppleWebKit/533.16 (KHTML, like Gecko) Version/5.0 Safari/533.16 Silk-Accelerated=true",
    "Mozilla/5.0 (Linux; U; Android 2.3.4; en-us; Kindle Fire Build/GINGERBREAD) AppleWebKit/533.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/533.1",
    "Mozilla/5.0 (X11; CrOS aarch64 15236.80.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.5735.119 Safari/537.36",
    "Mozilla/5.0 (PlayStation Vita 3.61) AppleWebKit/537.73 (KHTML, like Gecko) Silk/3.2",
    "Mozilla/5.0 (iPod touch; CPU iPhone OS 7_0 like Mac OS X) AppleWebKit/537.40 (KHTML, like Gecko) Version/6.0 Mobile/11A4400f Safari/8536.25",
    "Mozilla/5.0 (Linux; Android 13; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/116.0.0.0 Mobile Safari/537.36",
    "Roku4640X/DVP-7.70 (297.70E04154A)",
    "atc/1.0 watchOS/5.1.3 model/Watch3,4 hwp/t8004 build/16S535 (6; dt:156)",
    "Mozilla/5.0 (Windows NT 10.0; SMARTTV) Xbox Firefox/120.0",
    "Mozilla/5.0 (Nintendo Switch; SmartTV) AppleWebKit/606.4 NintendoBrowser/5.1.0.20393",
    "Mozilla/5.0 (Linux; Android 9; AFTMM; Apple Watch) Silk/102.2.1 like Chrome/102.0 Safari/537.36",
    "curl/8.5.0",
    "MyApp/1.0 (Windows NT 10.0)",
    "Mozilla/4.0 (compatible; Linux 2.6.10) NetFront/3.3 Kindle/1.0 (screen 600x800)",
    "Mozilla/5.0 (Linux; U; Android 2.2; en-us; Dell Streak Build/Donut AppleWebKit/528.5+ (KHTML, like Gecko) Version/3.1.2 Mobile Safari/525.20.1",
    "Mozilla/4.0 (compatible; MSIE 4.01; Windows CE; PPC; 240x320)",
    "Mozilla/4.0 (compatible; MSIE 7.0; IEMobile 7.11)",
    "Mozilla/5.0 (CPH2487) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/101.0.1862.69 Mobile Safari/537.36",
    "Mozilla/5.0 (CPU OS 17_0) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/118.0 Safari/604.1",
    "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.14977",
    "Mozilla/5.0 (Mobile; ZTEOPEN; rv:18.1) Gecko/18.0 Firefox/18.1",
    "SomeGame/1.0 J2ME",
    "Mozilla/5.0 (Linux; iPhone; Lenovo TB-X606F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/113.0.4751.103 Safari/537.36",
    "Mozilla/5.0 (Linux; AGooglebot-Mobilendroid 12; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.5216.85 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0; Maemo) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0.4375.71 Safari/537.36",
]


def _user_agents_device_type(ua: str) -> str:
    """The device type as user-agents' own UserAgent computes it, fed by the same ua-parser
    1.x parse, with the kind markers found by Python's re. (Browser and OS names follow
    ua-parser-js instead: tests/test_device_parity.py.)"""
    import re

    import ua_parser
    from user_agents import parsers

    from plugins.device import _KINDS

    parsed = ua_parser.parse(ua)
    agent = parsers.UserAgent.__new__(parsers.UserAgent)  # skip its legacy parse
    agent.ua_string = ua
    browser, os_, device = parsed.user_agent, parsed.os, parsed.device
    agent.browser = parsers.parse_browser(
        *(browser and (browser.family, browser.major, browser.minor, browser.patch) or ["Other"])
    )
    agent.os = parsers.parse_operating_system(
        *(os_ and (os_.family, os_.major, os_.minor, os_.patch) or ["Other"])
    )
    agent.device = parsers.parse_device(
        *(device and (device.family, device.brand, device.model) or ["Other", None, None])
    )
    markers = {marker: kind for kind, ms in _KINDS.items() for marker in ms}
    found = re.search("|".join(map(re.escape, markers)), ua.lower())
    if agent.is_bot:
        device_type = "Bot"
    elif found:
        device_type = markers[found.group()]
    elif agent.is_tablet:
        device_type = "Tablet"
    elif agent.is_mobile:
        device_type = "Mobile"
    elif agent.browser.family != "Other" and agent.is_pc:
        device_type = "Desktop"
    else:
        device_type = "Unknown"
    return device_type


def test_device_classification_is_user_agents_own() -> None:
    """describe() applies user-agents' rules without building its objects: same device type
    on the test table, the edge cases, every crawler example and a benchmark-like mix."""
    import random

    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    from bench.workload import user_agents
    from plugins.device import describe

    agents = [row[0] for row in UA_TABLE] + EDGE_USER_AGENTS + user_agents(300, random.Random(3))
    agents += [ua for entry in CRAWLER_USER_AGENTS_DATA for ua in entry.get("instances", [])]
    mismatches = [
        ua for ua in agents if dict(describe(ua))["device_type"] != _user_agents_device_type(ua)
    ]
    assert not mismatches, mismatches[:5]
    assert len(agents) > 2000


class TestBots:
    @pytest.mark.parametrize(
        "user_agent",
        [
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "curl/8.5.0",
            "python-requests/2.31",
            "Go-http-client/1.1",
        ],
    )
    def test_keyed_bot_events_are_stored_and_flagged_even_with_block_bots(
        self, post: Any, site: dict[str, Any], stored_events: Any, user_agent: str
    ) -> None:
        """Rybbit skips its bot check for requests with an API key: they come from the
        customer's own server. The event is kept, flagged so that queries can leave it out."""
        assert site["settings"]["block_bots"] is True
        assert post(user_agent=user_agent).get_json() == {"success": True}
        event = last_event(stored_events)
        assert event["is_bot"] is True and event["user_agent"] == user_agent

    @pytest.mark.parametrize(
        "header",
        [
            "WordPress/6.5.3; https://blog.example.com",
            "libwww-perl/6.72",
            "got (https://github.com/sindresorhus/got)",
            "HTTPie/3.2.2",
            "python-requests/2.31.0",
            "curl/8.5.0",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ],
    )
    def test_the_sending_servers_own_client_never_makes_a_bot(
        self,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
        header: str,
    ) -> None:
        response = client.post(
            "/api/track",
            json={"api_key": api_key, "site_id": site["site_id"], "pathname": "/wp"},
            headers={"User-Agent": header},
        )
        assert response.get_json() == {"success": True}
        event = last_event(stored_events)
        assert event["pathname"] == "/wp" and "is_bot" not in event

    def test_with_block_bots_off_bots_are_stored_and_flagged(
        self, app: Flask, post: Any, site: dict[str, Any], stored_events: Any
    ) -> None:
        from rybbit import sites

        with app.app_context():
            sites.update_site(get_store(), site["site_id"], {"settings": {"block_bots": False}})
        assert post(user_agent=UA_TABLE[13][0]).get_json() == {"success": True}
        event = last_event(stored_events)
        assert event["is_bot"] is True and event["device_type"] == "Bot"


@pytest.mark.ack_store
def test_ended_sessions_are_deleted(app: Flask, post: Any) -> None:
    from plugins.sessions import SessionsEnricher
    from rybbit.plugin_loader import RUNNER_KEY

    post(user_id="u-old")
    with app.app_context():
        set_sessions_last_seen(get_store(), datetime.now(UTC) - timedelta(minutes=31))
        (sessions,) = [
            e for e in app.extensions[RUNNER_KEY].enrichers if isinstance(e, SessionsEnricher)
        ]
        sessions._next_cleanup = None  # as when the next clean-up comes due
    post(user_id="u-new")
    with app.app_context():
        remaining = [doc["_id"].split(":", 1)[1] for doc in get_store().list_sessions()]
    assert remaining == ["u-new"]

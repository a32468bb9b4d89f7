"""POST /api/v2/query on both stores: answers checked against ones computed here, naively,
from a generated data set; validation, auth scopes, the site's time zone."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import keys, sites
from rybbit.stats.query_schema import METRICS
from rybbit.storage import get_store

TOKEN = "stats-admin-token-0123456789abcdefghijkl"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ZONE = "America/New_York"  # 2026-11-01: the clocks went back (a 25-hour day in the data)
PAGES = ["/", "/pricing", "/blog/a", "/blog/b", "/docs", "/signup"]
COUNTRIES = ["US", "DE", "FR", None]
REFERRERS = ["", "https://www.google.com/search?q=x", "https://news.ycombinator.com/item"]


@pytest.fixture
def app_config(mongo_uri: str | None) -> dict[str, Any]:
    return {"TESTING": True, "MONGO_URI": mongo_uri, "LOAD_PLUGINS": [], "ADMIN_TOKEN": TOKEN}


def generate(site_id: str, now: datetime, seed: int = 5) -> list[dict[str, Any]]:
    """Sessions of 1-6 events over the 16 days before ``now``, shaped as the service stores
    them (sessions assigned; visit fields the same on each event of a visitor, the referrer
    and UTM tags on the first only). Each event in its own second: no ties."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    used: set[int] = set()
    for number in range(160):
        user = f"user{rng.randrange(60)}"
        country = COUNTRIES[hash(user) % len(COUNTRIES)]
        browser = ["Chrome", "Firefox"][int(user[4:]) % 2]
        second = int((now - timedelta(days=16)).timestamp()) + rng.randrange(16 * 86400 - 4000)
        referrer = rng.choice(REFERRERS)
        utm = rng.random() < 0.2
        for index in range(rng.randint(1, 6)):
            second += rng.randint(1, 600)
            while second in used:
                second += 1
            used.add(second)
            stamp = datetime.fromtimestamp(second, UTC)
            if stamp >= now:
                break
            kind = rng.choices(["pageview", "custom_event", "performance"], [8, 2, 1])[0]
            event: dict[str, Any] = {
                "site_id": site_id,
                "type": kind,
                "timestamp": stamp,
                "received_at": stamp,
                "pathname": rng.choice(PAGES),
                "hostname": rng.choice(["example.com", "shop.example.com"]),
                "user_id": user,
                "session_id": f"s{number}",
                "browser": browser,
                "device_type": "Desktop",
                "channel": "Direct",
            }
            if country:
                event["country"] = country
            if index == 0 and referrer:
                event["referrer"] = referrer
            if index == 0 and utm:
                event["utm_source"] = "newsletter"
            if kind == "custom_event":
                event["event_name"] = rng.choice(["signup", "download"])
                event["properties"] = {
                    "plan": rng.choice(["free", "pro"]),
                    "seats": rng.randint(1, 2),
                }
            events.append(event)
    # A bot's event (no session: not counted) and another site's event (never counted).
    events.append({**events[0], "session_id": None, "is_bot": True, "user_id": "bot"})
    events.append({**events[1], "site_id": "other"})
    return events


# -- the answers, computed naively -----------------------------------------------------------


def source(first: dict[str, Any]) -> str:
    if first.get("utm_source"):
        return str(first["utm_source"])
    if first.get("referrer"):
        return re.sub(r"^www\.", "", first["referrer"].split("/")[2])
    return "Direct / None"


def expected(
    events: list[dict[str, Any]],
    site_id: str,
    start: datetime,
    end: datetime,
    key: Callable[[dict[str, Any], dict[str, Any]], tuple[Any, ...]],
    keep: Callable[[dict[str, Any], dict[str, Any]], bool] = lambda e, s: True,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Per group: every metric, by the definitions in docs/stats.md."""
    chosen = [
        e
        for e in events
        if e["site_id"] == site_id and start <= e["timestamp"] < end and e.get("session_id")
    ]
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(chosen, key=lambda e: e["timestamp"]):
        by_session[e["session_id"]].append(e)
    info = {}
    for sid, evs in by_session.items():
        views = [e for e in evs if e["type"] == "pageview"]
        others = [e for e in evs if e["type"] not in ("pageview", "performance")]
        info[sid] = {
            "first": evs[0],
            "entry": views[0]["pathname"] if views else None,
            "exit": views[-1]["pathname"] if views else None,
            "bounced": len(views) == 1 and not others,
            "seconds": (evs[-1]["timestamp"] - evs[0]["timestamp"]).total_seconds(),
        }
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for e in chosen:
        if keep(e, info[e["session_id"]]):
            groups[key(e, info[e["session_id"]])].append(e)
    everyone = {e["user_id"] for evs in groups.values() for e in evs}
    answers = {}
    for group, evs in groups.items():
        sessions = {e["session_id"] for e in evs}
        visitors = {e["user_id"] for e in evs}
        pageviews = sum(e["type"] == "pageview" for e in evs)
        answers[group] = {
            "visitors": len(visitors),
            "visits": len(sessions),
            "pageviews": pageviews,
            "events": len(evs),
            "views_per_visit": round(pageviews / len(sessions), 2),
            "bounce_rate": round(100 * sum(info[s]["bounced"] for s in sessions) / len(sessions)),
            "visit_duration": round(sum(info[s]["seconds"] for s in sessions) / len(sessions)),
            "percentage": round(100 * len(visitors) / len(everyone), 1),
        }
    return answers


def as_results(
    answers: dict[tuple[Any, ...], dict[str, Any]], metrics: list[str]
) -> dict[tuple[Any, ...], list[Any]]:
    return {group: [values[m] for m in metrics] for group, values in answers.items()}


def got(body: dict[str, Any]) -> dict[tuple[Any, ...], list[Any]]:
    return {tuple(row["dimensions"]): row["metrics"] for row in body["results"]}


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def data(app: Flask, now: datetime) -> dict[str, Any]:
    """Two sites (one in New York time) with the same kind of data, and a stats key."""
    with app.app_context():
        store = get_store()
        utc_site = sites.create_site(store, name="UTC", domain="example.com")["site_id"]
        ny_site = sites.create_site(store, name="NY", domain="ny.example", time_zone=ZONE)[
            "site_id"
        ]
        events = generate(utc_site, now) + generate(ny_site, now, seed=9)
        store.insert_events([dict(e) for e in events])  # through the storage interface
        key = keys.create_key(store, utc_site, scopes=["stats:read"])["api_key"]
        ny_key = keys.create_key(store, ny_site, scopes=["stats:read"])["api_key"]
    return {"events": events, "utc": utc_site, "ny": ny_site, "key": key, "ny_key": ny_key}


@pytest.fixture
def query(client: FlaskClient, data: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    def run(site: str = "utc", status: int = 200, **body: Any) -> dict[str, Any]:
        body = {"site_id": data[site], **body}
        headers = {"Authorization": f"Bearer {data['key' if site == 'utc' else 'ny_key']}"}
        response = client.post("/api/v2/query", json=body, headers=headers)
        assert response.status_code == status, response.get_json()
        return dict(response.get_json())

    return run


def days(zone: str, first: date, last: date) -> tuple[datetime, datetime]:
    tz = ZoneInfo(zone)
    start = datetime(first.year, first.month, first.day, tzinfo=tz).astimezone(UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=tz) + timedelta(days=1)
    return start, end.astimezone(UTC)


# Every metric that needs no dimension (percentage does).
ALL_METRICS = [metric for metric in METRICS if metric != "percentage"]


# -- answers ---------------------------------------------------------------------------------


def test_every_metric_over_a_custom_range(query: Any, data: dict[str, Any], now: datetime) -> None:
    first, last = (now - timedelta(days=12)).date(), (now - timedelta(days=2)).date()
    body = query(metrics=ALL_METRICS, date_range=[first.isoformat(), last.isoformat()])
    want = expected(data["events"], data["utc"], *days("UTC", first, last), lambda e, s: ())
    assert got(body) == as_results(want, ALL_METRICS)
    assert want[()]["visits"] > 50 and 0 < want[()]["bounce_rate"] < 100  # a real test
    assert body["query"]["date_range"] == [f"{first}T00:00:00+00:00", f"{last}T23:59:59+00:00"]


def test_seven_days_is_today_and_the_six_before(
    query: Any, data: dict[str, Any], now: datetime
) -> None:
    today = now.date()
    body = query(metrics=["visitors", "events"], date_range="7d")
    start, end = days("UTC", today - timedelta(days=6), today)
    want = expected(data["events"], data["utc"], start, end, lambda e, s: ())
    assert got(body) == as_results(want, ["visitors", "events"])


def test_pages_ordered_paginated_with_percentage(query: Any, data: dict[str, Any]) -> None:
    metrics = ["visitors", "pageviews", "percentage"]
    body = query(
        metrics=metrics,
        date_range="30d",
        dimensions=["event:page"],
        order_by=[["pageviews", "desc"]],
        include={"total_rows": True},
        pagination={"limit": 3, "offset": 1},
    )
    today = datetime.now(UTC).date()
    start, end = days("UTC", today - timedelta(days=29), today)
    want = as_results(
        expected(data["events"], data["utc"], start, end, lambda e, s: (e["pathname"],)), metrics
    )
    ordered = sorted(want.items(), key=lambda item: (-item[1][1], item[0]))
    assert [(tuple(r["dimensions"]), r["metrics"]) for r in body["results"]] == ordered[1:4]
    assert body["meta"] == {"total_rows": len(want)}


def test_visit_dimensions_come_from_the_session(query: Any, data: dict[str, Any]) -> None:
    metrics = ["visitors", "visits", "bounce_rate", "visit_duration", "events"]
    dims = ["visit:entry_page", "visit:exit_page", "visit:source", "visit:country"]
    body = query(metrics=metrics, date_range="30d", dimensions=dims)
    today = datetime.now(UTC).date()
    start, end = days("UTC", today - timedelta(days=29), today)

    def key(e: dict[str, Any], s: dict[str, Any]) -> tuple[Any, ...]:
        return (s["entry"], s["exit"], source(s["first"]), s["first"].get("country"))

    assert got(body) == as_results(expected(data["events"], data["utc"], start, end, key), metrics)
    assert any(row["dimensions"][2] == "google.com" for row in body["results"])


def test_filters_combine(query: Any, data: dict[str, Any]) -> None:
    filters = [
        ["or", [["contains", "event:page", ["blog"]], ["matches", "event:page", ["^/pri"]]]],
        ["not", ["is", "visit:country", ["FR"]]],
        ["is_not", "event:hostname", ["shop.example.com"]],
        ["contains_not", "visit:browser", ["Fire"]],
    ]
    metrics = ["visitors", "visits", "pageviews", "bounce_rate"]
    body = query(metrics=metrics, date_range="30d", dimensions=["visit:country"], filters=filters)
    today = datetime.now(UTC).date()

    def keep(e: dict[str, Any], s: dict[str, Any]) -> bool:
        return (
            ("blog" in e["pathname"] or e["pathname"].startswith("/pri"))
            and s["first"].get("country") != "FR"
            and e["hostname"] != "shop.example.com"
            and "Fire" not in s["first"]["browser"]
        )

    want = expected(
        data["events"],
        data["utc"],
        *days("UTC", today - timedelta(days=29), today),
        lambda e, s: (s["first"].get("country"),),
        keep,
    )
    assert got(body) == as_results(want, metrics)
    assert ("FR",) not in want and len(want) >= 2


def test_event_names_and_properties(query: Any, data: dict[str, Any]) -> None:
    dims = ["event:name", "event:props:plan", "event:props:seats"]
    body = query(
        metrics=["events", "visitors"],
        date_range="30d",
        dimensions=dims,
        filters=[["is", "event:name", ["signup", "download"]]],
    )
    today = datetime.now(UTC).date()

    def key(e: dict[str, Any], s: dict[str, Any]) -> tuple[Any, ...]:
        props = e.get("properties") or {}
        return (e.get("event_name") or e["type"], props.get("plan"), str(props.get("seats")))

    want = expected(
        data["events"],
        data["utc"],
        *days("UTC", today - timedelta(days=29), today),
        key,
        lambda e, s: e.get("event_name") in ("signup", "download"),
    )
    assert got(body) == as_results(want, ["events", "visitors"])
    assert ("signup", "pro", "2") in got(body)


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "month"])
def test_time_buckets_in_the_site_time_zone(
    query: Any, data: dict[str, Any], granularity: str
) -> None:
    tz = ZoneInfo(ZONE)
    today = datetime.now(tz).date()
    first = today - timedelta(days=14) if granularity != "hour" else today - timedelta(days=3)
    last = today if granularity != "hour" else first
    body = query(
        site="ny",
        metrics=["visitors", "pageviews"],
        date_range=[first.isoformat(), last.isoformat()],
        dimensions=[f"time:{granularity}"],
        include={"time_labels": True},
    )

    def bucket(e: dict[str, Any], s: dict[str, Any]) -> tuple[Any, ...]:
        local = e["timestamp"].astimezone(tz)
        if granularity == "hour":
            return (local.strftime("%Y-%m-%d %H:00:00"),)
        day = local.date()
        if granularity == "week":
            day -= timedelta(days=day.weekday())
        if granularity == "month":
            day = day.replace(day=1)
        return (day.isoformat(),)

    want = as_results(
        expected(data["events"], data["ny"], *days(ZONE, first, last), bucket),
        ["visitors", "pageviews"],
    )
    assert got(body) == want
    assert [tuple(r["dimensions"]) for r in body["results"]] == sorted(want)  # time ascending
    labels = body["meta"]["time_labels"]
    assert set(want) <= {(label,) for label in labels}
    if granularity == "day":
        assert labels[0] == first.isoformat() and labels[-1] == last.isoformat()
        assert len(labels) == 15
    if granularity == "hour":
        assert labels[0] == f"{first} 00:00:00" and len(labels) in (23, 24, 25)


def test_percentage_and_time_of_the_auto_dimension(query: Any) -> None:
    body = query(metrics=["visitors"], date_range="day", dimensions=["time"])
    assert all(
        re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:00:00", r["dimensions"][0]) for r in body["results"]
    )
    body = query(metrics=["visitors"], date_range="12mo", dimensions=["time"])
    assert all(re.fullmatch(r"\d{4}-\d{2}-01", r["dimensions"][0]) for r in body["results"])
    assert body["results"], "the data falls in this month or the last"


def test_all_starts_at_the_first_event(query: Any, data: dict[str, Any]) -> None:
    body = query(metrics=["events"], date_range="all")
    mine = [e for e in data["events"] if e["site_id"] == data["utc"] and e.get("session_id")]
    assert got(body) == {(): [len(mine)]}
    first = min(e["timestamp"] for e in mine).date()
    assert body["query"]["date_range"][0] == f"{first}T00:00:00+00:00"


def test_a_site_without_events_answers_zeros(client: FlaskClient, app: Flask) -> None:
    with app.app_context():
        site = sites.create_site(get_store(), name="Empty", domain="e.example")["site_id"]
    response = client.post(
        "/api/v2/query",
        json={"site_id": site, "metrics": ["visitors"], "date_range": "7d"},
        headers=ADMIN,
    )
    assert response.status_code == 200
    assert response.get_json()["results"] == []


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"metrics": ["visitors", "bogus"]}, "#/metrics/1: Unknown metric 'bogus'"),
        ({"dimensions": ["event:colour"]}, "#/dimensions/0: Unknown dimension 'event:colour'"),
        ({"date_range": "8d"}, "#/date_range: Unknown date range '8d'"),
        ({"date_range": ["2026-02-30", "2026-03-01"]}, "#/date_range: Invalid date"),
        ({"filters": [["is", "event:page"]]}, "#/filters/0: Invalid filter"),
        ({"filters": [["equals", "event:page", ["/"]]]}, "#/filters/0/0: Unknown filter operator"),
        (
            {"filters": [["matches", "event:page", ["(unclosed"]]]},
            "#/filters/0/2/0: Invalid regular",
        ),
        (
            {"filters": [["not", ["is", "visit:planet", ["x"]]]]},
            "#/filters/0/1/1: Unknown dimension",
        ),
        ({"order_by": [["pageviews", "desc"]]}, "#/order_by/0: 'pageviews' is neither"),
        ({"pagination": {"limit": 0}}, "#/pagination/limit:"),
        ({"colour": "red"}, "#/colour: Unknown field 'colour'"),
        ({"metrics": ["percentage"]}, "#/metrics: Metric 'percentage' needs a dimension"),
        ({"include": {"time_labels": True}}, "#/include/time_labels: Needs a time dimension"),
        # Ranges a calendar cannot hold in every time zone, or too long to bucket (were 500s
        # or minutes of CPU before the query's time limit starts).
        ({"date_range": ["9999-12-31", "9999-12-31"]}, "#/date_range: Dates must fall in"),
        (
            {"date_range": ["0001-01-01T00:00:00+01:00", "0001-01-02T00:00:00Z"]},
            "#/date_range: Dates must fall in",
        ),
        ({"date_range": ["2000-01-01", "2020-01-01"]}, "#/date_range: A date range spans"),
        # Past SQLite's expression limits (was a 503 "store unavailable" on the embedded store).
        (
            {"filters": [["or", [["contains", "event:page", ["x"] * 100]] * 11]]},
            "#/filters: Filters hold at most 500 values",
        ),
    ],
)
def test_mistakes_are_400_naming_the_field(
    client: FlaskClient, site: dict[str, Any], body: dict[str, Any], message: str
) -> None:
    query = {"site_id": site["site_id"], "metrics": ["visitors"], "date_range": "7d", **body}
    response = client.post("/api/v2/query", json=query, headers=ADMIN)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["success"] is False and answer["error"].startswith(message), answer
    assert answer["details"]["fieldErrors"]


def test_a_site_id_reads_as_track_reads_it(client: FlaskClient, site: dict[str, Any]) -> None:
    """Digits name the site of that number ("01" is site 1), a JSON number too."""
    for site_id in (f"0{site['site_id']}", int(site["site_id"])):
        body = {"site_id": site_id, "metrics": ["visitors"], "date_range": "7d"}
        response = client.post("/api/v2/query", json=body, headers=ADMIN)
        assert response.status_code == 200, response.get_json()


def test_unknown_site_is_404(client: FlaskClient) -> None:
    body = {"site_id": "404", "metrics": ["visitors"], "date_range": "7d"}
    response = client.post("/api/v2/query", json=body, headers=ADMIN)
    assert response.status_code == 404
    assert response.get_json() == {"success": False, "error": "Site not found"}


def test_not_json_is_400(client: FlaskClient) -> None:
    response = client.post("/api/v2/query", data="nope", headers=ADMIN, content_type="text/plain")
    assert response.status_code == 400


# -- auth: key scopes ------------------------------------------------------------------------


def test_scopes(client: FlaskClient, app: Flask, site: dict[str, Any], api_key: str) -> None:
    body = {"site_id": site["site_id"], "metrics": ["visitors"], "date_range": "7d"}
    track = {"site_id": site["site_id"], "pathname": "/"}

    def ask(key: str) -> int:
        return client.post(
            "/api/v2/query", json=body, headers={"Authorization": f"Bearer {key}"}
        ).status_code

    with app.app_context():
        store = get_store()
        reader = keys.create_key(store, site["site_id"], scopes=["stats:read"])["api_key"]
        both = keys.create_key(store, site["site_id"], scopes=["ingest", "stats:read"])["api_key"]
        other = sites.create_site(store, name="Other", domain="o.example")["site_id"]
        foreign = keys.create_key(store, other, scopes=["stats:read"])["api_key"]
    assert client.post("/api/v2/query", json=body).status_code == 401
    assert ask(api_key) == 403, "an ingest key never reads stats"
    assert ask(reader) == 200 and ask(both) == 200 and ask(TOKEN) == 200
    assert ask(foreign) == 403, "a key reads its own site only"
    assert ask("rb_" + "0" * 32) == 403
    refused = client.post("/api/track", json={**track, "api_key": reader})
    assert refused.status_code == 403 and "ingest" in refused.get_json()["error"]
    assert client.post("/api/track", json={**track, "api_key": both}).status_code == 200
    assert client.post("/api/track", json={**track, "api_key": api_key}).status_code == 200


def test_keys_stored_without_scopes_are_ingest_keys(
    client: FlaskClient, app: Flask, site: dict[str, Any]
) -> None:
    with app.app_context():
        store = get_store()
        made = keys.create_key(store, site["site_id"])
        store.update_key(made["id"], {"scopes": None})  # as keys made before scopes
        assert keys.public_key(store.find_key(made["id"]))["scopes"] == ["ingest"]
    ok = client.post("/api/track", json={"site_id": site["site_id"], "api_key": made["api_key"]})
    assert ok.status_code == 200


def test_admin_api_and_cli_choose_scopes(
    client: FlaskClient, app: Flask, site: dict[str, Any]
) -> None:
    path = f"/api/admin/sites/{site['site_id']}/api-keys"
    made = client.post(path, json={"scopes": ["stats:read"]}, headers=ADMIN)
    assert made.status_code == 201 and made.get_json()["scopes"] == ["stats:read"]
    plain = client.post(path, json={}, headers=ADMIN).get_json()
    assert plain["scopes"] == ["ingest"]
    wrong = client.post(path, json={"scopes": ["admin"]}, headers=ADMIN)
    assert wrong.status_code == 400 and "scopes.0" in wrong.get_json()["details"]["fieldErrors"]
    listed = client.get(path, headers=ADMIN).get_json()["api_keys"]
    # By id: two keys made in the same millisecond are listed in either order.
    by_id = {k["id"]: k["scopes"] for k in listed}
    assert by_id == {made.get_json()["id"]: ["stats:read"], plain["id"]: ["ingest"]}
    result = app.test_cli_runner().invoke(
        args=["keys", "create", site["site_id"], "--scope", "stats:read", "--scope", "ingest"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scopes"] == ["ingest", "stats:read"]


# -- the site's time zone --------------------------------------------------------------------


def test_time_zone_setting(client: FlaskClient, site: dict[str, Any]) -> None:
    path = f"/api/admin/sites/{site['site_id']}"
    assert client.get(path, headers=ADMIN).get_json()["time_zone"] == "UTC"
    changed = client.patch(path, json={"time_zone": "Asia/Kolkata"}, headers=ADMIN)
    assert changed.status_code == 200 and changed.get_json()["time_zone"] == "Asia/Kolkata"
    wrong = client.patch(path, json={"time_zone": "Mars/Olympus"}, headers=ADMIN)
    assert wrong.status_code == 400 and "time_zone" in wrong.get_json()["details"]["fieldErrors"]
    made = client.post(
        "/api/admin/sites",
        json={"name": "T", "domain": "t.example", "time_zone": "Europe/Berlin"},
        headers=ADMIN,
    )
    assert made.status_code == 201 and made.get_json()["time_zone"] == "Europe/Berlin"
    body = {"site_id": site["site_id"], "metrics": ["visitors"], "date_range": "day"}
    answer = client.post("/api/v2/query", json=body, headers=ADMIN).get_json()
    assert answer["query"]["date_range"][0].endswith("T00:00:00+05:30")


# -- the embedded store's migration ----------------------------------------------------------


def test_a_store_written_before_the_stats_columns_is_migrated_at_start_up(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/data/embedded_store_v1.sqlite3 was written by the code before this feature
    (tests/data/write_store_v1.py says how): schema version 1, no stats columns."""
    import shutil
    import sqlite3
    from pathlib import Path

    from rybbit import create_app, delivery

    instance = tmp_path / "instance"
    (instance / "data").mkdir(parents=True)
    database = instance / "data" / "rybbit.sqlite3"
    shutil.copy(Path(__file__).parent / "data" / "embedded_store_v1.sqlite3", database)
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        docs = [json.loads(doc) for (doc,) in conn.execute("SELECT doc FROM events")]
    monkeypatch.setenv("RYBBIT_INSTANCE_PATH", str(instance))
    monkeypatch.delenv("MONGO_URI", raising=False)
    app = create_app({"TESTING": True, "MONGO_URI": None, "LOAD_PLUGINS": [], "ADMIN_TOKEN": TOKEN})
    try:
        body = {
            "site_id": "1",
            "metrics": ["visitors", "visits", "pageviews", "events"],
            "date_range": ["2026-12-01", "2026-12-01"],
            "dimensions": ["event:page"],
        }
        response = app.test_client().post("/api/v2/query", json=body, headers=ADMIN)
        assert response.status_code == 200, response.get_json()
        want: dict[tuple[Any, ...], list[int]] = {}
        for page in {doc.get("pathname") for doc in docs}:
            mine = [doc for doc in docs if doc.get("pathname") == page]
            want[(page,)] = [
                len({doc["user_id"] for doc in mine}),
                len({doc["session_id"] for doc in mine}),
                sum(doc["type"] == "pageview" for doc in mine),
                len(mine),
            ]
        assert got(response.get_json()) == want
        assert len(docs) == 7 and (None,) in want  # the custom event has no page
    finally:
        delivery.close(app)
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        filled = conn.execute(
            "SELECT count(*) FROM events WHERE session_id = json_extract(doc, '$.session_id') "
            "AND user_id = json_extract(doc, '$.user_id')"
        ).fetchone()
        assert filled == (7,)
        indexed = [row[2] for row in conn.execute("PRAGMA index_info(events_site_ts)")]
        assert indexed == ["site_id", "ts", "id", "session_id", "user_id", "type", "pathname"]


def test_a_query_past_the_time_limit_is_stopped(
    client: FlaskClient, app: Flask, data: dict[str, Any]
) -> None:
    """The embedded store interrupts the statement; MongoDB stops at maxTimeMS."""
    app.config["STATS_QUERY_TIMEOUT_SECONDS"] = 0.000001
    body = {"site_id": data["utc"], "metrics": ["visitors"], "date_range": "30d"}
    response = client.post("/api/v2/query", json=body, headers=ADMIN)
    assert response.status_code == 503
    assert "STATS_QUERY_TIMEOUT_SECONDS" in response.get_json()["error"]
    app.config["STATS_QUERY_TIMEOUT_SECONDS"] = 30
    assert client.post("/api/v2/query", json=body, headers=ADMIN).status_code == 200


def test_a_rotated_key_keeps_its_scopes(client: FlaskClient, site: dict[str, Any]) -> None:
    path = f"/api/admin/sites/{site['site_id']}/api-keys"
    made = client.post(path, json={"scopes": ["stats:read"]}, headers=ADMIN).get_json()
    rotated = client.post(f"{path}/{made['id']}/rotate", json={}, headers=ADMIN)
    assert rotated.status_code == 201 and rotated.get_json()["scopes"] == ["stats:read"]
    body = {"site_id": site["site_id"], "metrics": ["visitors"], "date_range": "7d"}
    bearer = {"Authorization": f"Bearer {rotated.get_json()['api_key']}"}
    assert client.post("/api/v2/query", json=body, headers=bearer).status_code == 200


def test_a_migration_stopped_half_way_carries_on_where_it_stopped(tmp_path: Any) -> None:
    """As a gunicorn worker killed during the migration leaves the store: columns added,
    the first rows filled and recorded as done. The next start fills only the rest."""
    import shutil
    import sqlite3
    from pathlib import Path

    from rybbit.storage import SQLiteStorage

    database = tmp_path / "rybbit.sqlite3"
    shutil.copy(Path(__file__).parent / "data" / "embedded_store_v1.sqlite3", database)
    with sqlite3.connect(database) as conn:
        for name in ("session_id", "user_id", "pathname", "hostname", "event_name"):
            conn.execute(f"ALTER TABLE events ADD COLUMN {name} TEXT")
        conn.execute("UPDATE events SET session_id = 'filled before' WHERE seq <= 3")
        conn.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [("stats_columns_last", "7"), ("stats_columns_filled_to", "3")],
        )
    store = SQLiteStorage(str(database))
    store.ensure_indexes()
    store.close()
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT seq, session_id = json_extract(doc, '$.session_id'), session_id FROM events "
            "ORDER BY seq"
        ).fetchall()
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    assert [row[2] for row in rows[:3]] == ["filled before"] * 3, "not done twice"
    assert all(row[1] == 1 for row in rows[3:]) and len(rows) == 7

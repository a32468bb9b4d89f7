"""Client event ids (stored once, however often retried) and client event times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask

from rybbit import keys, sites
from rybbit.store import get_store


def test_a_retried_event_id_is_acknowledged_and_stored_once(post: Any, stored_events: Any) -> None:
    for _ in range(3):
        response = post(event_id="order-1001-pageview", pathname="/a")
        assert response.status_code == 200 and response.get_json() == {"success": True}
    post(event_id="order-1002-pageview", pathname="/b")
    assert sorted(e["pathname"] for e in stored_events()) == ["/a", "/b"]
    assert all(e["event_id"].startswith("order-") for e in stored_events())


def test_event_ids_are_per_site(app: Flask, post: Any, client: Any, stored_events: Any) -> None:
    with app.app_context():
        other = sites.create_site(get_store(), name="o", domain="o.example")
        key = keys.create_key(get_store(), other["site_id"])["api_key"]
    post(event_id="same")
    client.post(
        "/api/track", json={"api_key": key, "site_id": other["site_id"], "event_id": "same"}
    )
    assert len(stored_events()) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "String must contain at least 1 character(s)"),
        ("x" * 65, "String must contain at most 64 character(s)"),
        (7, "Expected string, received number"),
    ],
)
def test_event_id_rules(post: Any, value: Any, message: str) -> None:
    response = post(event_id=value)
    assert response.status_code == 400
    assert response.get_json()["details"]["fieldErrors"]["event_id"] == [message]


def _stamp(event: dict[str, Any], field: str = "timestamp") -> datetime:
    return event[field]


def test_client_time_in_iso_8601_or_epoch_ms(post: Any, stored_events: Any) -> None:
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=123000)
    post(timestamp=an_hour_ago.isoformat().replace("+00:00", "Z"), pathname="/iso")
    post(timestamp=int(an_hour_ago.timestamp() * 1000), pathname="/ms")
    post(timestamp=an_hour_ago.replace(tzinfo=None).isoformat(), pathname="/naive-is-utc")
    for event in stored_events():
        assert _stamp(event) == an_hour_ago, event["pathname"]
        assert _stamp(event, "received_at") > an_hour_ago + timedelta(minutes=59)


def test_offsets_are_converted_to_utc(post: Any, stored_events: Any) -> None:
    moment = datetime.now(UTC) - timedelta(hours=2)
    local = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
    post(timestamp=local.isoformat())
    assert abs(_stamp(stored_events()[0]) - moment) < timedelta(milliseconds=1)


def test_times_over_72_hours_old_are_refused(post: Any, stored_events: Any) -> None:
    old = datetime.now(UTC) - timedelta(hours=72, minutes=1)
    response = post(timestamp=old.isoformat())
    assert response.status_code == 400
    assert response.get_json()["details"]["fieldErrors"]["timestamp"] == [
        "Timestamp must not be more than 72 hours in the past"
    ]
    assert post(timestamp=(old + timedelta(minutes=5)).isoformat()).status_code == 200
    assert len(stored_events()) == 1


def test_future_times_beyond_an_hour_are_clamped_to_receive_time(
    post: Any, stored_events: Any
) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=30)).replace(microsecond=0)
    post(timestamp=soon.isoformat(), pathname="/soon")
    post(timestamp=(datetime.now(UTC) + timedelta(hours=3)).isoformat(), pathname="/far")
    by_path = {e["pathname"]: e for e in stored_events()}
    soon_event, far_event = by_path["/soon"], by_path["/far"]
    assert _stamp(soon_event) == soon
    assert _stamp(far_event) == _stamp(far_event, "received_at")


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01T00:00:00Z", True, [], 1e30])
def test_unusable_times_are_400(post: Any, value: Any) -> None:
    response = post(timestamp=value)
    assert response.status_code == 400
    assert "timestamp" in response.get_json()["details"]["fieldErrors"]

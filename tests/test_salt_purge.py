"""Visitor-id salts are deleted on a timer, whatever the traffic, an hour after their day."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from plugins.identity import DailySalts
from rybbit.store import get_store


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "PLUGIN_SETTINGS": {"identity": {"salt_purge_seconds": 0.2}}}


def _salt_days(app: Flask) -> set[str]:
    with app.app_context():
        return {doc["_id"] for doc in get_store().list_salts()}


def test_expired_salts_go_without_any_traffic(app: Flask) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with app.app_context():
        store = get_store()
        for day in ("2000-01-01", "2000-01-02", today):
            store.salt_for_day({"_id": day, "salt": "00" * 32, "created_at": datetime.now(UTC)})
    deadline = time.monotonic() + 10
    while _salt_days(app) != {today} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _salt_days(app) == {today}  # no event was sent: the timer did it


@pytest.mark.parametrize(
    ("now", "kept"),
    [
        (datetime(2999, 3, 2, 0, 59, tzinfo=UTC), {"2999-03-01", "2999-03-02"}),
        (datetime(2999, 3, 2, 1, 0, tzinfo=UTC), {"2999-03-02"}),
        (datetime(2999, 3, 2, 23, 59, tzinfo=UTC), {"2999-03-02"}),
    ],
)
def test_a_salt_lives_until_an_hour_after_its_day(
    app: Flask, now: datetime, kept: set[str]
) -> None:
    with app.app_context():
        store = get_store()
        for day in ("2999-02-28", "2999-03-01", "2999-03-02"):
            store.salt_for_day({"_id": day, "salt": "00", "created_at": now})
        DailySalts.purge(store, now)
    assert _salt_days(app) == kept


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_a_purge_interval_that_is_not_positive_is_refused_at_start(
    app_config: dict[str, Any], instance_path: Any, interval: float
) -> None:
    from rybbit import create_app

    def purgers() -> int:
        return sum(t.name == "identity-salt-purge" for t in threading.enumerate())

    before = purgers()
    app = create_app(
        {**app_config, "PLUGIN_SETTINGS": {"identity": {"salt_purge_seconds": interval}}}
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "salt_purge_seconds must be a positive number" in response.get_data(as_text=True)
    assert purgers() <= before  # no purge thread of this app

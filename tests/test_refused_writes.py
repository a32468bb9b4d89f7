"""One event the store refuses fails only its own request, never the others sharing its write.

FerretDB (the MongoDB-wire server of the tests) cannot store nested arrays. Such properties are
refused up front by validation on both stores; the group-commit tests reach the server with a
refused document through an enricher, as any shape the server rejects would.
"""

from __future__ import annotations

import threading
from typing import Any

import pymongo
import pytest
from flask import Flask

from rybbit.delivery import get_delivery
from rybbit.store import EventsRefused, get_store
from rybbit.write_errors import outcomes
from tests.conftest import add_enricher
from tests.test_metrics import events, scrape


@pytest.mark.parametrize(
    "props", ['{"a": [[1]]}', "[[]]", '{"a": [1, {"b": [2, [3]]}]}', '{"a": {"b": [[{}]]}}']
)
def test_nested_arrays_in_properties_are_400_naming_the_field(
    post: Any, stored_events: Any, props: str
) -> None:
    response = post(type="custom_event", event_name="e", properties=props)
    assert response.status_code == 400
    assert response.get_json()["details"] == {
        "fieldErrors": {"properties": ["Arrays directly inside arrays are not supported"]},
        "formErrors": [],
    }
    assert stored_events() == []


def test_arrays_of_objects_holding_arrays_are_fine(post: Any, stored_events: Any) -> None:
    props = '{"items": [{"tags": ["a", "b"]}, {"tags": []}], "n": [1, 2]}'
    assert post(type="custom_event", event_name="e", properties=props).status_code == 200
    assert stored_events()[0]["properties"]["items"][0]["tags"] == ["a", "b"]


def _refuse_bad_paths(event: dict[str, Any], context: Any) -> None:
    """An enricher adding a shape FerretDB refuses, to the events of path /bad."""
    if event.get("pathname") == "/bad":
        event["unstorable"] = [[1]]


class GatedFirstWrite:
    """Wraps the store's group-commit write: the first call waits for the gate, so the requests
    arriving meanwhile are known to share the second call."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.gate = threading.Event()
        self.first_started = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, events: list[dict[str, Any]]) -> Any:
        self.sizes.append(len(events))
        if len(self.sizes) == 1:
            self.first_started.set()
            self.gate.wait(10)
        return self.run(events)


@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
@pytest.mark.ack_store
def test_a_refused_event_fails_only_its_own_request(
    app: Flask, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    add_enricher(app, "unstorable", _refuse_bad_paths)
    group = get_delivery(app).group  # type: ignore[union-attr]
    gated = GatedFirstWrite(group._run)
    group._run = gated
    paths = ["/lead", "/a", "/bad", "/b", "/c"]
    answers: dict[str, Any] = {}

    def send(path: str) -> None:
        body = {"api_key": api_key, "site_id": site["site_id"], "pathname": path}
        answers[path] = app.test_client().post("/api/track", json=body)

    threads = [threading.Thread(target=send, args=(path,)) for path in paths]
    threads[0].start()
    assert gated.first_started.wait(10)
    for thread in threads[1:]:
        thread.start()
    for _ in range(200):  # every follower queued behind the gated write
        if len(group._queue) == len(paths) - 1:
            break
        threading.Event().wait(0.02)
    gated.gate.set()
    for thread in threads:
        thread.join(20)

    assert gated.sizes == [1, len(paths) - 1]  # the refused event shared its write
    assert {p: r.status_code for p, r in answers.items()} == {
        "/lead": 200,
        "/a": 200,
        "/bad": 400,
        "/b": 200,
        "/c": 200,
    }
    error = answers["/bad"].get_json()
    assert error["success"] is False and error["error"] == "Invalid payload"
    assert "nested arrays" in error["details"]["formErrors"][0]
    assert sorted(e["pathname"] for e in stored_events()) == ["/a", "/b", "/c", "/lead"]


@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
@pytest.mark.ack_store
def test_a_refused_batch_item_fails_alone(
    app: Flask, client: Any, site: dict[str, Any], api_key: str, stored_events: Any
) -> None:
    add_enricher(app, "unstorable", _refuse_bad_paths)
    base = {"api_key": api_key, "site_id": site["site_id"]}
    before = scrape(client)
    response = client.post(
        "/api/track/batch",
        json=[{**base, "pathname": p} for p in ("/a", "/bad", "/b")],
    )
    counted = events(before, scrape(client))
    assert counted == {
        ("accepted", "none", site["site_id"], "pageview"): 2,
        ("rejected", "invalid", site["site_id"], "pageview"): 1,
    }
    assert response.status_code == 200
    body = response.get_json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][1]["error"] == "Invalid payload"
    assert "nested arrays" in body["results"][1]["details"]["formErrors"][0]
    assert sorted(e["pathname"] for e in stored_events()) == ["/a", "/b"]


@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
def test_commit_events_names_the_refused_positions(app: Flask, stored_events: Any) -> None:
    events = [{"n": 0}, {"n": 1, "x": [[1]]}, {"n": 2}, {"n": 3, "x": [[]]}]
    with app.app_context():
        with pytest.raises(EventsRefused) as raised:
            get_store().commit_events(events)
    assert sorted(raised.value.reasons) == [1, 3]
    assert sorted(e["n"] for e in stored_events()) == [0, 2]


def test_write_errors_map_to_their_documents() -> None:
    details = {
        "writeErrors": [
            {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 2, "code": 2, "errmsg": "invalid value"},
            {"index": 3, "code": 91, "errmsg": "shutting down"},
        ]
    }
    result = outcomes(details, 4)
    assert result[0] is None and result[1] is None  # a duplicate is a repeat, stored already
    assert str(result[2]) == "invalid value"
    assert type(result[3]).__name__ == "StoreUnavailable"


def _transient_for_flaky_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stores every event but those with pathname /flaky, which get a transient
    per-document error (91, ShutdownInProgress, as a mongos reports for one shard)."""
    original = pymongo.collection.Collection.insert_many

    def insert_many(self: Any, documents: Any, *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        flaky = [i for i, d in enumerate(documents) if d.get("pathname") == "/flaky"]
        if not flaky:
            return original(self, documents, *args, **kwargs)
        others = [d for i, d in enumerate(documents) if i not in flaky]
        if others:
            original(self, others, *args, **kwargs)
        errors = [{"index": i, "code": 91, "errmsg": "shutting down"} for i in flaky]
        raise pymongo.errors.BulkWriteError(
            {"writeErrors": errors, "writeConcernErrors": [], "nInserted": len(others)}
        )

    monkeypatch.setattr(pymongo.collection.Collection, "insert_many", insert_many)


@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
@pytest.mark.ack_store
def test_a_transient_error_on_one_batch_item_fails_that_item_only(
    client: Any,
    site: dict[str, Any],
    api_key: str,
    stored_events: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _transient_for_flaky_paths(monkeypatch)
    base = {"api_key": api_key, "site_id": site["site_id"]}
    before = scrape(client)
    response = client.post(
        "/api/track/batch", json=[{**base, "pathname": p} for p in ("/a", "/flaky", "/b")]
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["success"], body["accepted"], body["rejected"]) == (False, 2, 1)
    item = body["results"][1]
    assert (item["success"], item["error"]) == (False, "Storage unavailable, please retry")
    assert "again" in item["message"]
    assert sorted(e["pathname"] for e in stored_events()) == ["/a", "/b"]
    counted = events(before, scrape(client))
    assert counted[("accepted", "none", site["site_id"], "pageview")] == 2
    assert sum(n for k, n in counted.items() if k[0] == "rejected") == 1

    # Nothing of it stored: the whole batch, or a single event, is a 503.
    for path, payload in (
        ("/api/track/batch", [{**base, "pathname": "/flaky"}]),
        ("/api/track", {**base, "pathname": "/flaky"}),
    ):
        response = client.post(path, json=payload)
        assert response.status_code == 503, response.get_json()
        assert response.get_json()["error"] == "Storage unavailable, please retry"
    assert len(stored_events()) == 2


@pytest.mark.parametrize("store_kind", ["mongo"], indirect=True)
@pytest.mark.ack_store
def test_a_refused_single_event_counts_as_rejected_like_a_batch_item(
    app: Flask, client: Any, site: dict[str, Any], api_key: str
) -> None:
    add_enricher(app, "unstorable", _refuse_bad_paths)
    before = scrape(client)
    body = {"api_key": api_key, "site_id": site["site_id"], "pathname": "/bad"}
    assert client.post("/api/track", json=body).status_code == 400
    assert events(before, scrape(client)) == {
        ("rejected", "invalid", site["site_id"], "pageview"): 1,
    }

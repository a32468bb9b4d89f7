"""Chunked bodies over the cap, forwarded addresses that are not addresses, and logs that carry
no client address or event content unless an operator asks for them."""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from rybbit import create_app, keys, sites
from rybbit.logging_setup import (
    CLIENT_DATA_ENV,
    ClientDataFilter,
    JsonFormatter,
    TextFormatter,
    dict_config,
)
from rybbit.store import get_store
from tests.gunicorn_service import run_service


def _chunks(body: bytes, size: int = 1000) -> Any:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _padded(base: dict[str, Any], total: int) -> bytes:
    """``base`` as JSON, followed by white space up to ``total`` bytes: valid JSON in its first
    part, so a body cut at the cap would parse."""
    text = json.dumps(base).encode()
    return text + b" " * (total - len(text))


def _post_chunked(client: FlaskClient, body: bytes) -> Any:
    """As a server that decodes chunked bodies hands them over: no length, a stream that ends
    (``wsgi.input_terminated``)."""
    return client.post(
        "/api/track",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


class TestChunkedBodies:
    def test_over_the_cap_is_413(
        self,
        app: Flask,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
    ) -> None:
        cap = app.config["MAX_CONTENT_LENGTH"]
        body = _padded({"api_key": api_key, "site_id": site["site_id"]}, cap + 10)
        response = _post_chunked(client, body)
        assert response.status_code == 413
        assert response.get_json() == {"success": False, "error": "Payload too large"}
        assert stored_events() == []

    @pytest.mark.parametrize("size", [100, "cap"])
    def test_up_to_the_cap_is_accepted(
        self, app: Flask, client: FlaskClient, site: dict[str, Any], api_key: str, size: Any
    ) -> None:
        size = app.config["MAX_CONTENT_LENGTH"] if size == "cap" else size
        body = _padded({"api_key": api_key, "site_id": site["site_id"]}, size)
        response = _post_chunked(client, body)
        assert response.status_code == 200


class TestForwardedAddresses:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_config, "TRUSTED_PROXIES": 1}

    @pytest.mark.parametrize(
        ("forwarded", "stored"),
        [
            ("not-an-ip", "10.9.8.7"),
            ("1.2.3.4:5678", "10.9.8.7"),
            ("", "10.9.8.7"),
            ("203.0.113.5", "203.0.113.5"),
            ("spoofed, 2001:db8::1", "2001:db8::1"),
        ],
    )
    def test_the_peer_address_unless_the_forwarded_one_is_an_ip(
        self,
        app: Flask,
        client: FlaskClient,
        site: dict[str, Any],
        api_key: str,
        stored_events: Any,
        forwarded: str,
        stored: str,
    ) -> None:
        with app.app_context():
            sites.update_site(get_store(), site["site_id"], {"settings": {"track_ip": True}})
        response = client.post(
            "/api/track",
            json={"api_key": api_key, "site_id": site["site_id"]},
            headers={"X-Forwarded-For": forwarded},
            environ_base={"REMOTE_ADDR": "10.9.8.7"},
        )
        assert response.status_code == 200
        assert stored_events()[0]["ip_address"] == stored


def _record(name: str, level: int, msg: str, *args: Any, error: Exception | None = None) -> Any:
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def _raised(message: str) -> Exception:
    try:
        try:
            raise KeyError(message)
        except KeyError as inner:
            raise ValueError(message) from inner
    except ValueError as exc:
        return exc


class TestLogFilter:
    SECRET = "alice@example.com properties {'card': '4111'}"

    @pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
    def test_tracebacks_keep_their_frames_not_their_messages(self, formatter: Any) -> None:
        record = _record(
            "rybbit.errors", logging.ERROR, "unhandled error", error=_raised(self.SECRET)
        )
        assert ClientDataFilter().filter(record)
        line = formatter().format(record)
        assert "alice" not in line and "4111" not in line
        assert "builtins.ValueError" in line and "builtins.KeyError" in line
        assert "_raised" in line  # the frames are still there
        assert CLIENT_DATA_ENV in line  # and how to get the messages

    def test_gunicorn_invalid_request_loses_address_and_request_text(self) -> None:
        record = _record(
            "gunicorn.error",
            logging.WARNING,
            "Invalid request from ip=203.0.113.9: Invalid Request Line 'GET /?user=alice'",
        )
        ClientDataFilter().filter(record)
        message = record.getMessage()
        assert "203.0.113.9" not in message and "alice" not in message
        assert message.startswith("Invalid request from ip=(withheld): Invalid Request Line")

    def test_gunicorn_request_errors_lose_the_query_string(self) -> None:
        record = _record(
            "gunicorn.error",
            logging.ERROR,
            "Error handling request %s %s",
            "POST",
            "/api/track?user=alice",
        )
        ClientDataFilter().filter(record)
        assert record.getMessage() == "Error handling request POST /api/track?..."

    def test_other_gunicorn_lines_are_untouched(self) -> None:
        record = _record(
            "gunicorn.error", logging.INFO, "Listening at: %s", "http://127.0.0.1:8000"
        )
        ClientDataFilter().filter(record)
        assert record.getMessage() == "Listening at: http://127.0.0.1:8000"

    def test_an_operator_can_turn_it_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert dict_config("json")["handlers"]["stderr"]["filters"] == ["client_data"]
        monkeypatch.setenv(CLIENT_DATA_ENV, "1")
        assert "filters" not in dict_config("json")["handlers"]["stderr"]


def test_through_gunicorn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same three behaviours, end to end, through gunicorn's own parsing and logging."""
    monkeypatch.delenv(CLIENT_DATA_ENV, raising=False)
    with run_service(tmp_path, None, workers=1, RYBBIT_TRUSTED_PROXIES="1") as service:
        site = service.admin("POST", "/sites", {"name": "s", "domain": "s.example"})
        service.admin("PATCH", f"/sites/{site['site_id']}", {"settings": {"track_ip": True}})
        key = service.admin("POST", f"/sites/{site['site_id']}/api-keys")
        host, port = service.base_url.removeprefix("http://").split(":")
        credentials = {"api_key": key["api_key"], "site_id": site["site_id"]}

        def post_chunked(body: bytes, headers: dict[str, str] | None = None) -> int:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request(
                "POST",
                "/api/track",
                body=_chunks(body),
                headers={"Content-Type": "application/json", **(headers or {})},
                encode_chunked=True,
            )
            status = connection.getresponse().status
            connection.close()
            return status

        assert post_chunked(_padded(credentials, 1024 * 1024 + 10)) == 413  # the default cap
        assert post_chunked(_padded(credentials, 2000), {"X-Forwarded-For": "not-an-ip"}) == 200
        events = service.admin("GET", f"/sites/{site['site_id']}/events")["events"]
        assert [e["ip_address"] for e in events] == ["127.0.0.1"]

        with socket.create_connection((host, int(port)), timeout=5) as sock:
            # Well framed (the worker hands it to gunicorn), but a method gunicorn refuses.
            sock.sendall(b"get /?user=alice@example.com HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1000)
        deadline = time.monotonic() + 5
        while not any("Invalid request" in r["message"] for r in service.log_records()):
            assert time.monotonic() < deadline, "gunicorn logged no invalid request"
            time.sleep(0.1)
    warnings = [r for r in service.log_records() if "Invalid request" in r["message"]]
    assert all("127.0.0.1" not in json.dumps(r) and "alice" not in json.dumps(r) for r in warnings)


def test_the_app_logs_no_event_content_on_a_500(
    instance_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500's traceback, logged through the app's own logging set-up (as under gunicorn)."""
    monkeypatch.delenv(CLIENT_DATA_ENV, raising=False)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []  # as in a fresh process: configure_logging installs its handler
    try:
        app = create_app({"MONGO_URI": None, "LOAD_PLUGINS": [], "PROPAGATE_EXCEPTIONS": False})
        with app.app_context():
            site = sites.create_site(get_store(), name="s", domain="s.example")
            key = keys.create_key(get_store(), site["site_id"])

        def explode(*args: Any, **kwargs: Any) -> None:
            raise ValueError(f"cannot store {args[1]!r}")

        monkeypatch.setattr(get_store(app).__class__, "insert_events", explode)
        response = app.test_client().post(
            "/api/track",
            json={
                "api_key": key["api_key"],
                "site_id": site["site_id"],
                "user_id": "alice@example.com",
            },
        )
        assert response.status_code == 500
    finally:
        for handler in root.handlers:
            handler.flush()
        root.handlers = saved
    logged = capfd.readouterr().err
    assert "unhandled error" in logged and "builtins.ValueError" in logged
    assert "alice@example.com" not in logged

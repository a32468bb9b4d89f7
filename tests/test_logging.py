"""Log lines: JSON or text, one per request, and never a secret or an unconsented IP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from rybbit import create_app, keys, sites
from rybbit.logging_setup import JsonFormatter, TextFormatter, chosen_format
from rybbit.store import get_store
from tests.gunicorn_service import ADMIN_TOKEN, ROOT, run_service

HIDDEN_IP = "203.0.113.77"  # sent by a site without track_ip: must never be logged
KEPT_IP = "198.51.100.23"  # sent by a site with track_ip
JSON_FIELDS = {"time", "level", "logger", "pid", "message"}


@pytest.fixture
def store_kind() -> str:
    return "embedded"  # logging does not depend on the store


@pytest.fixture
def request_lines(caplog: pytest.LogCaptureFixture) -> Any:
    """The request log records so far, as the JSON objects they are written as."""
    caplog.set_level(logging.DEBUG)
    formatter = JsonFormatter()

    def _lines() -> list[dict[str, Any]]:
        return [
            json.loads(formatter.format(r)) for r in caplog.records if r.name == "rybbit.request"
        ]

    return _lines


def test_one_line_per_request_with_site_and_key_prefix(
    post: Any, api_key: str, site: dict[str, Any], request_lines: Any
) -> None:
    assert post(ip_address=HIDDEN_IP).status_code == 200
    [line] = request_lines()
    assert JSON_FIELDS <= set(line) and line["level"] == "INFO" and line["pid"] == os.getpid()
    assert line["time"].endswith("Z") and line["message"] == "request"
    assert {k: line[k] for k in ("method", "path", "route", "status")} == {
        "method": "POST",
        "path": "/api/track",
        "route": "/api/track",
        "status": 200,
    }
    assert isinstance(line["duration_ms"], float) and 0 < line["duration_ms"] < 10_000
    assert line["site_id"] == site["site_id"]
    assert line["key_prefix"] == keys.key_prefix(api_key) == api_key[:11]
    assert "client_ip" not in line
    text = json.dumps(line)
    assert api_key not in text and HIDDEN_IP not in text


def test_keyless_requests_name_their_site(
    client: FlaskClient, site: dict[str, Any], request_lines: Any
) -> None:
    body = {"site_id": site["site_id"]}
    assert (
        client.post("/api/track", json=body, headers={"Origin": "https://example.com"}).status_code
        == 200
    )
    assert (
        client.post("/api/track", json=body, headers={"Origin": "https://evil.net"}).status_code
        == 403
    )
    accepted, refused = request_lines()
    assert (accepted["site_id"], accepted["keyless"]) == (site["site_id"], True)
    assert "key_prefix" not in accepted and refused["status"] == 403


def test_client_ip_only_for_a_site_that_keeps_ips(
    app: Flask, client: FlaskClient, post: Any, request_lines: Any
) -> None:
    with app.app_context():
        keeper = sites.create_site(
            get_store(), name="Keeps IPs", domain="k.example", settings={"track_ip": True}
        )
        keeper_key = keys.create_key(get_store(), keeper["site_id"])["api_key"]
    body = {"api_key": keeper_key, "site_id": keeper["site_id"]}
    client.post("/api/track", json={**body, "ip_address": KEPT_IP})
    client.post("/api/track", json=body)  # no body IP: the peer's
    post(ip_address=HIDDEN_IP)
    client.post("/api/track/batch", json=[{**body, "ip_address": KEPT_IP}])
    lines = request_lines()
    assert [line.get("client_ip") for line in lines] == [KEPT_IP, "127.0.0.1", None, "127.0.0.1"]
    assert HIDDEN_IP not in json.dumps(lines)


def test_batch_line_names_each_site_and_key_once(
    app: Flask, client: FlaskClient, site: dict[str, Any], api_key: str, request_lines: Any
) -> None:
    with app.app_context():
        second = keys.create_key(get_store(), site["site_id"])["api_key"]
    items = [{"api_key": k, "site_id": site["site_id"]} for k in (api_key, second, api_key)]
    assert client.post("/api/track/batch", json=items).status_code == 200
    [line] = request_lines()
    assert line["site_id"] == site["site_id"]
    assert line["key_prefix"] == ",".join(sorted([api_key[:11], second[:11]]))
    assert api_key not in json.dumps(line) and second not in json.dumps(line)


def test_refused_keys_show_at_most_a_prefix(post: Any, request_lines: Any) -> None:
    wrong = "rb_" + "ab" * 16
    pasted_secret = "sk_live_0123456789abcdef0123456789"
    assert post(api_key=wrong).status_code == 403
    assert post(api_key=pasted_secret).status_code == 403
    refused, malformed = request_lines()
    assert refused["status"] == 403 and refused["key_prefix"] == wrong[:11]
    assert "key_prefix" not in malformed
    text = json.dumps(request_lines())
    assert wrong not in text and pasted_secret[:6] not in text


def test_admin_token_is_never_logged(
    instance_path: Path, caplog: pytest.LogCaptureFixture, request_lines: Any
) -> None:
    token = "admin-token-for-logging-test-0123"
    app = create_app({"MONGO_URI": None, "LOAD_PLUGINS": [], "ADMIN_TOKEN": token})
    client = app.test_client()
    assert (
        client.get("/api/admin/sites", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    assert (
        client.get("/api/admin/sites", headers={"Authorization": f"Bearer {token}x"}).status_code
        == 401
    )
    assert [line["status"] for line in request_lines()] == [200, 401]
    formatter = JsonFormatter()
    assert all(token not in formatter.format(record) for record in caplog.records)


def test_probes_are_logged_at_debug(client: FlaskClient, request_lines: Any) -> None:
    client.get("/healthz?token=abc")
    client.get("/metrics")
    client.get("/no/such/path")
    assert [(line["level"], line["path"]) for line in request_lines()] == [
        ("DEBUG", "/healthz"),
        ("DEBUG", "/metrics"),
        ("INFO", "/no/such/path"),
    ]
    assert "route" not in request_lines()[-1]
    assert "token=abc" not in json.dumps(request_lines())  # paths never carry the query


def _record(message: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("kaput")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("rybbit.test", logging.ERROR, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_extras_and_tracebacks_and_cut_api_keys() -> None:
    key = "rb_" + "c" * 32
    line = JsonFormatter().format(_record("key %s failed", key, exc=True, status=500, who=key))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "key rb_cccccccc... failed" and parsed["who"] == "rb_cccccccc..."
    assert (
        parsed["status"] == 500 and parsed["level"] == "ERROR" and parsed["logger"] == "rybbit.test"
    )
    assert "ValueError: kaput" in parsed["exc_info"]
    assert key not in line


def test_text_lines_are_for_people() -> None:
    key = "rb_" + "d" * 32
    text = TextFormatter().format(_record("with %s", key, exc=True, status=200, path="/a b"))
    first, *rest = text.split("\n")
    assert (
        first.startswith("[")
        and f"[{os.getpid()}] [ERROR] rybbit.test: with rb_dddddddd..." in first
    )
    assert first.endswith('status=200 path="/a b"')
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: kaput"
    assert key not in text


def test_format_follows_the_terminal_unless_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RYBBIT_LOG_FORMAT", raising=False)
    leader, follower = os.openpty()
    with open(follower, "w") as terminal, open(tmp_path / "file", "w") as file:
        assert chosen_format(terminal) == "text"
        assert chosen_format(file) == "json"
        monkeypatch.setenv("RYBBIT_LOG_FORMAT", "JSON")
        assert chosen_format(terminal) == "json"
        monkeypatch.setenv("RYBBIT_LOG_FORMAT", "text")
        assert chosen_format(file) == "text"
        monkeypatch.setenv("RYBBIT_LOG_FORMAT", "yaml")
        with pytest.raises(ValueError, match="RYBBIT_LOG_FORMAT"):
            chosen_format(file)
    os.close(leader)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_app_logs_text_in_a_terminal_and_json_otherwise(tmp_path: Path, terminal: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RYBBIT_LOG_FORMAT"}
    env["RYBBIT_INSTANCE_PATH"] = str(tmp_path / "instance")
    env.pop("MONGO_URI", None)
    code = "from rybbit import create_app; create_app({'LOAD_PLUGINS': []})"
    if terminal:
        leader, follower = os.openpty()
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stderr=follower, check=True, timeout=60
        )
        os.close(follower)
        output = os.read(leader, 65536).decode()
        os.close(leader)
    else:
        output = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            check=True,
            timeout=60,
        ).stderr
    lines = [line for line in output.splitlines() if line.strip()]
    storage = [line for line in lines if "storage: embedded store" in line]
    assert len(storage) == 1
    if terminal:
        assert "[INFO] rybbit.storage: storage: embedded store" in storage[0]
        assert not storage[0].startswith("{")
    else:
        assert all(JSON_FIELDS <= set(json.loads(line)) for line in lines)


def test_gunicorn_output_is_json_without_secrets_or_unconsented_ips(tmp_path: Path) -> None:
    """Two workers, real HTTP: every line gunicorn and the app wrote is JSON, and none holds an
    API key, the admin token, or the IP of a site that does not keep IPs."""
    with run_service(tmp_path, None, workers=2, RYBBIT_RATE_LIMIT="off") as service:
        hidden = service.admin("POST", "/sites", {"name": "Private", "domain": "p.example"})
        keeper = service.admin("POST", "/sites", {"name": "Keeper", "domain": "k.example"})
        service.admin("PATCH", f"/sites/{keeper['site_id']}", {"settings": {"track_ip": True}})
        hidden_key = service.admin("POST", f"/sites/{hidden['site_id']}/api-keys", {})
        keeper_key = service.admin("POST", f"/sites/{keeper['site_id']}/api-keys", {})
        sent = service.track_many(hidden_key, count=30, ip_address=HIDDEN_IP)
        sent += service.track_many(keeper_key, count=10, ip_address=KEPT_IP)
        assert {r.status_code for r in sent} == {200}
        batch = [
            {
                "api_key": hidden_key["api_key"],
                "site_id": hidden["site_id"],
                "ip_address": HIDDEN_IP,
            }
        ]
        requests.post(f"{service.base_url}/api/track/batch", json=batch, timeout=10)
        refused = {**hidden_key, "api_key": hidden_key["api_key"][:-4] + "0000"}
        assert service.track_many(refused, count=2)[0].status_code == 403
        assert requests.get(f"{service.base_url}/metrics", timeout=10).status_code == 200
    output = (tmp_path / "gunicorn.log").read_text()
    records = [json.loads(line) for line in output.splitlines()]  # every line is JSON

    assert all(JSON_FIELDS <= set(record) for record in records)
    for secret in (
        hidden_key["api_key"],
        keeper_key["api_key"],
        refused["api_key"],
        ADMIN_TOKEN,
        HIDDEN_IP,
    ):
        assert secret not in output
    assert {"gunicorn.error", "rybbit.request", "rybbit.plugin_loader"} <= {
        r["logger"] for r in records
    }
    assert not [r for r in records if r["logger"] == "gunicorn.access"]
    tracked = [r for r in records if r["logger"] == "rybbit.request" and r["path"] == "/api/track"]
    private = [r for r in tracked if r.get("site_id") == hidden["site_id"]]
    kept = [r for r in tracked if r.get("site_id") == keeper["site_id"]]
    assert len(private) == 32 and len(kept) == 10
    assert {r["key_prefix"] for r in private if r["status"] == 200} == {hidden_key["prefix"]}
    assert {r["key_prefix"] for r in private if r["status"] == 403} == {refused["api_key"][:11]}
    assert len({r["pid"] for r in private}) == 2, "both workers logged requests"
    assert all("client_ip" not in r for r in private)
    assert {r["client_ip"] for r in kept} == {KEPT_IP}

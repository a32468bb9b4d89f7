"""Clients that trickle their requests must not stop the service from answering others.

A real gunicorn with the default settings (gunicorn.conf.py: threads for the embedded store,
gevent with a MongoDB server), 200 connections sending a request a byte at a time, and normal
requests beside them that must be answered promptly.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.gunicorn_service import run_service

SLOW_CONNECTIONS = 200
JSON = {"Content-Type": "application/json"}
BODY = b'{"api_key": "rb_' + b"0" * 32 + b'", "site_id": "1", "pathname": "/slow"}'


@contextlib.contextmanager
def trickling_clients(base_url: str, count: int, body_first: bool) -> Iterator[list[Any]]:
    """``count`` connections, each sending one more byte of a POST every half second: headers
    complete and the body trickling (``body_first``), or the headers themselves trickling."""
    parts = urlsplit(base_url)
    head = (
        b"POST /api/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n"
    )
    socks: list[socket.socket] = []
    stop = threading.Event()
    for _ in range(count):
        sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        if body_first:
            sock.sendall(head)
        socks.append(sock)
    pending = BODY if body_first else head + BODY

    def trickle() -> None:
        sent = 0
        while not stop.is_set() and sent < len(pending) - 1:  # never the last byte
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(pending[sent : sent + 1])
            sent += 1
            stop.wait(0.5)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("body_first", [True, False], ids=["slow-body", "slow-headers"])
def test_slow_clients_do_not_stop_normal_requests(
    tmp_path: Path, store_kind: str, mongo_uri: str | None, body_first: bool
) -> None:
    with run_service(tmp_path, mongo_uri) as service:
        site = service.admin("POST", "/sites", {"name": "s", "domain": "s.example"})
        key = service.admin("POST", f"/sites/{site['site_id']}/api-keys")
        body = {"api_key": key["api_key"], "site_id": site["site_id"], "pathname": "/normal"}
        with trickling_clients(service.base_url, SLOW_CONNECTIONS, body_first):
            time.sleep(1.5)  # every slow connection has been accepted and started sending
            durations = []
            for _ in range(10):
                started = time.monotonic()
                # A fresh connection each time, as a new client would open.
                response = requests.post(
                    f"{service.base_url}/api/track",
                    json=body,
                    headers={"Connection": "close"},
                    timeout=10,
                )
                durations.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
        assert max(durations) < 2.0, durations


def test_the_threaded_worker_still_speaks_http_as_before(tmp_path: Path) -> None:
    """Kept-alive connections, Expect: 100-continue and a request that never completes, on
    the worker that reads requests whole before a thread serves them (the embedded store's)."""
    with run_service(tmp_path, None, workers=1, RYBBIT_REQUEST_READ_TIMEOUT="2") as service:
        site = service.admin("POST", "/sites", {"name": "s", "domain": "s.example"})
        key = service.admin("POST", f"/sites/{site['site_id']}/api-keys")
        body = json.dumps({"api_key": key["api_key"], "site_id": site["site_id"]}).encode()
        parts = urlsplit(service.base_url)
        address = (parts.hostname, parts.port)

        # Several requests on one kept-alive connection.
        with requests.Session() as session:
            statuses = [
                session.post(
                    f"{service.base_url}/api/track", data=body, headers=JSON, timeout=10
                ).status_code
                for _ in range(5)
            ]
        assert statuses == [200] * 5

        # A client that waits for "100 Continue" before its body gets it, then the answer.
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(
                b"POST /api/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
            answer = b""
            while b'{"success":true}' not in answer:
                chunk = sock.recv(1000)
                assert chunk, answer
                answer += chunk
            assert b"HTTP/1.1 200" in answer

        # A request that cannot be framed is answered 400 at once, holding no thread.
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"POST /api/track HTTP/1.1\r\nContent-Length: x\r\n\r\n")
            answer = sock.recv(1000)
            assert answer.startswith(b"HTTP/1.1 400") and b'"success": false' in answer

        # A request that never completes is closed after RYBBIT_REQUEST_READ_TIMEOUT.
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"POST /api/track HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            started = time.monotonic()
            assert sock.recv(100) == b""  # closed, without an answer
            assert 1.5 < time.monotonic() - started < 6


@pytest.mark.parametrize(
    ("received", "state"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "whole"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n" + b"x" * 10, "partial"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", "partial"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "whole"),
        (b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", "whole"),
        # A body past the limit: the app refuses it (413) from what has arrived.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 1500, "whole"),
        # Headers past the limit, or no HTTP at all: a thread would wait for their end.
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 2000, "malformed"),
        (b"GARBAGE\r\n\r\n", "malformed"),
    ],
)
def test_when_a_request_goes_to_a_thread(received: bytes, state: str) -> None:
    from rybbit.gunicorn_worker import _Arriving

    arriving = _Arriving(conn=None, deadline=0.0, limit=1000)
    arriving.data += received
    arriving.framing.receive_data(received)
    assert arriving.state(1000) == state

"""Clients that trickle their requests must not stop the service from answering others.

A real gunicorn with the default settings (gunicorn.conf.py: gevent workers), and the
buffering thread worker (RYBBIT_WORKER_CLASS=gthread) on its own; 200 connections sending a request a byte at a time, and normal
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
    with run_service(
        tmp_path,
        None,
        workers=1,
        RYBBIT_WORKER_CLASS="gthread",
        RYBBIT_REQUEST_READ_TIMEOUT="2",
    ) as service:
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
        # Pipelined: the first request is whole; the rest is gunicorn's to keep for later.
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n", "whole"),
        # A declared body over the limit is refused at once, before it is sent.
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n", "too_large"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 999, "partial"),
        # Large headers count as headers, not body: the body is still incomplete.
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 5000 + b"\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"x" * 500,
            "partial",
        ),
        # A chunked body over the limit, counted in body bytes.
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"3e9\r\n"
            + b"x" * 1001
            + b"\r\n",
            "too_large",
        ),
        # 1-byte chunks: framing makes raw bytes outgrow body bytes; raw bytes are capped too.
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * 12_000,
            "too_large",
        ),
        # Headers past their room (arrived whole, or not yet), a request with no Host, or no
        # HTTP at all.
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n", "headers_too_large"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 70_000, "headers_too_large"),
        (b"GET / HTTP/1.1\r\n\r\n", "malformed"),
        (b"GARBAGE\r\n\r\n", "malformed"),
    ],
)
def test_when_a_request_goes_to_a_thread(received: bytes, state: str) -> None:
    from rybbit.gunicorn_worker import _Arriving

    arriving = _Arriving(conn=None, deadline=0.0, limit=1000)
    arriving.receive(received)
    assert arriving.state() == state


def test_a_thread_never_waits_on_its_socket_past_the_bound() -> None:
    from rybbit.gunicorn_worker import bound_reads

    ours, theirs = socket.socketpair()
    with ours, theirs:
        bound_reads(ours, 0.3)
        ours.setblocking(True)  # what gunicorn's thread does before reading
        started = time.monotonic()
        with pytest.raises(BlockingIOError):
            ours.recv(10)
        assert time.monotonic() - started < 2


def _answer(sock: socket.socket) -> bytes:
    """What the server sends until it closes (or 5 s pass)."""
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_requests_that_are_not_whole_never_reach_a_thread(tmp_path: Path) -> None:
    """The review's attacks on a worker with 2 threads: each must hold no thread (normal
    requests are still answered at once) or be refused in the event loop, in the contract's
    error shape."""
    with run_service(
        tmp_path, None, workers=1, RYBBIT_WORKER_CLASS="gthread", RYBBIT_THREADS="2"
    ) as service:
        site = service.admin("POST", "/sites", {"name": "s", "domain": "s.example"})
        key = service.admin("POST", f"/sites/{site['site_id']}/api-keys")
        body = {"api_key": key["api_key"], "site_id": site["site_id"], "pathname": "/normal"}
        parts = urlsplit(service.base_url)
        address = (parts.hostname, parts.port)
        pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 700) for i in range(100))  # 71 KB
        chunked = b"POST /api/track HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        held = [
            # ~55 KB of headers and all but the last 1000 bytes of a 1 MiB-ish body.
            b"POST /api/track HTTP/1.1\r\nHost: x\r\n"
            + pad[: 712 * 78]
            + b"Content-Length: 1040000\r\n\r\n"
            + b"x" * 1_039_000,
            # 1-byte chunks with no terminator (within the raw cap).
            chunked + b"1\r\nx\r\n" * 1000,
            # A whole request pipelined with half of the next one.
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n",
        ]
        refused = [
            (pad + b"Content-Length: 10\r\n\r\n", b"431", b"Request header fields too large"),
            (b"Content-Length: 1048577\r\n\r\n", b"413", b"Payload too large"),
            (
                b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 200_000,
                b"413",
                b"Payload too large",
            ),
            (b"\r\n", b"400", b"Bad request"),  # HTTP/1.1 without Host
        ]
        socks = []
        try:
            for attack in held * 2:  # twice as many as there are threads, of each kind
                sock = socket.create_connection(address, timeout=5)
                sock.sendall(attack)
                socks.append(sock)
            time.sleep(0.5)
            for _ in range(5):
                started = time.monotonic()
                response = requests.post(
                    f"{service.base_url}/api/track",
                    json=body,
                    timeout=10,
                    headers={"Connection": "close"},
                )
                assert response.status_code == 200, response.text
                assert time.monotonic() - started < 2.0
            # The pipelined connection got its first answer, and nothing for the half.
            pipelined = socks[2]
            pipelined.settimeout(1)
            first = b""
            with contextlib.suppress(TimeoutError):
                while chunk := pipelined.recv(4096):
                    first += chunk
            assert first.count(b"HTTP/1.1 200") == 1, first
        finally:
            for sock in socks:
                sock.close()

        for head, status, error in refused:
            with socket.create_connection(address, timeout=5) as sock:
                request = b"POST /api/track HTTP/1.1\r\n" + (
                    b"" if status == b"400" else b"Host: x\r\n"
                )
                with contextlib.suppress(OSError):  # the server may close before all is sent
                    sock.sendall(request + head)
                answer = _answer(sock)
            assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
            assert answer.endswith(b'{"success": false, "error": "' + error + b'"}'), answer

"""gunicorn's threaded worker, but a thread is given only to a request that has fully arrived.

gunicorn's gthread worker hands a connection to a thread as soon as its first bytes arrive; the
thread then reads the rest of the request, however slowly it comes. A few dozen clients sending
a byte every few seconds tie up every thread and nobody else is answered (the embedded store
runs with 2 workers x 16 threads). Here the worker's own event loop, which gthread already has
for kept-alive connections, reads each request into memory without blocking, and a thread gets
it only when the whole request (headers and body) is there. A slow client then costs a socket
and its bytes so far, not a thread. Framing (Content-Length, chunked, Expect: 100-continue) is
read by h11, a maintained HTTP/1.1 parser; the bytes handed to gunicorn are exactly those
received, so gunicorn's own parser and limits decide everything else. A request h11 cannot
frame is answered 400 here and its connection closed: a thread could not know where it ends.

A request must arrive whole within ``READ_TIMEOUT`` seconds (``RYBBIT_REQUEST_READ_TIMEOUT``,
default 30) or its connection is closed. Limits are enforced here too, so that no thread ever
gets a request that is not whole: a declared ``Content-Length`` or a body (counted in body bytes,
from h11's Data events) over the app's largest accepted body is answered 413, headers past
``_HEADROOM`` 431, and raw bytes (headers plus chunk framing) past body limit + ``_HEADROOM``
413, each in the contract's error shape and with the connection closed. Bytes gunicorn read
ahead of a pipelined request are taken from its parser and read here like fresh ones. As a
backstop, a thread's reads on a handed-over socket time out (SO_RCVTIMEO) after the read deadline.

gunicorn.conf.py loads this file by path, outside the ``rybbit`` package, so the master does not
import the app; it therefore imports only gunicorn, h11 and the standard library.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import socket
import struct
import time
from functools import partial
from typing import Any

import h11
from gunicorn import util as gunicorn_util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

READ_TIMEOUT = float(os.environ.get("RYBBIT_REQUEST_READ_TIMEOUT", "30"))
_RECV_SIZE = 64 * 1024
_HEADROOM = 64 * 1024  # request line and headers, beside the body
_DEFAULT_BODY_LIMIT = 1024 * 1024
_DISCARD = 4 * 1024 * 1024  # most bytes read and dropped after a refusal, before closing


def _refusal(status: str, error: str) -> bytes:
    """A complete response in the contract's error shape, closing the connection."""
    body = b'{"success": false, "error": "' + error.encode() + b'"}'
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


# What the event loop answers for a request it will not hand to a thread, by state.
_REFUSALS = {
    "malformed": _refusal("400 Bad Request", "Bad request"),
    "too_large": _refusal("413 Payload Too Large", "Payload too large"),
    "headers_too_large": _refusal(
        "431 Request Header Fields Too Large", "Request header fields too large"
    ),
}


class _Arriving:
    """A request being read: its bytes so far, h11's view of its framing, and its deadline."""

    __slots__ = ("conn", "data", "framing", "deadline", "continued", "dropped", "body", "limit")

    def __init__(self, conn: Any, deadline: float, limit: int) -> None:
        self.conn = conn
        self.data = bytearray()
        # h11 raises once incomplete headers pass this size (its default is 16 KiB).
        self.framing = h11.Connection(h11.SERVER, max_incomplete_event_size=_HEADROOM)
        self.deadline = deadline
        self.continued = False
        self.dropped = False
        self.body = 0  # body bytes so far, without chunk framing
        self.limit = limit  # the largest body accepted

    def receive(self, data: bytes) -> None:
        self.data += data
        self.framing.receive_data(data)

    def state(self) -> str:
        """``"whole"`` when the request has fully arrived (a thread can serve it without
        waiting for the client), ``"partial"`` while more is to come within the limits, else
        why it is refused here: ``"malformed"`` (not HTTP/1.x h11 can frame),
        ``"headers_too_large"`` or ``"too_large"`` (body or raw bytes over the limits)."""
        try:
            while True:
                event = self.framing.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Request):
                    # h11 bounds only headers that are still incomplete; these arrived whole.
                    if len(self.data) - len(self.framing.trailing_data[0]) > _HEADROOM:
                        return "headers_too_large"
                    if self._declared(event) > self.limit:
                        return "too_large"
                if isinstance(event, h11.Data):
                    self.body += len(event.data)
                    if self.body > self.limit:
                        return "too_large"
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return "whole"
                if event is h11.PAUSED:  # only after EndOfMessage
                    return "whole"
        except h11.RemoteProtocolError as error:
            return "headers_too_large" if error.error_status_hint == 431 else "malformed"
        # Chunk framing costs bytes that are not body: bound those too, so that memory per
        # connection stays at most the body limit plus the headers' room.
        return "too_large" if len(self.data) > self.limit + _HEADROOM else "partial"

    @staticmethod
    def _declared(request: h11.Request) -> int:
        """The request's Content-Length (h11 has checked it is one integer), else 0."""
        for name, value in request.headers:
            if name == b"content-length":
                return int(value)
        return 0

    def wants_continue(self) -> bool:
        """True once, when the client waits for ``100 Continue`` before sending its body."""
        if self.continued or not self.framing.they_are_waiting_for_100_continue:
            return False
        self.continued = True
        return True


def bound_reads(sock: Any, seconds: float) -> None:
    """Make a blocking ``recv`` on ``sock`` fail (EAGAIN) after ``seconds`` with nothing read.

    gunicorn's thread sets its socket blocking with no timeout; a socket-level receive
    timeout survives that, so a thread can never wait on a client for longer."""
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_RCVTIMEO,
        struct.pack("ll", whole, int((seconds - whole) * 1_000_000)),
    )


class BufferedThreadWorker(ThreadWorker):
    """gthread, reading each request whole in the event loop before a thread serves it."""

    def init_process(self) -> None:
        self._arriving: collections.deque[_Arriving] = collections.deque()
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        config = getattr(self.wsgi, "config", {}) or {}
        body = max(
            int(config.get("MAX_CONTENT_LENGTH") or 0),
            int(config.get("BATCH_MAX_CONTENT_LENGTH") or 0),
        )
        self.body_limit = body or _DEFAULT_BODY_LIMIT

    def _buffers(self, conn: Any) -> bool:
        """Whether this connection's requests are read here first: plain HTTP/1.x."""
        if self.cfg.is_ssl or conn.is_http2:
            return False
        # HTTP/2 negotiation needs gunicorn's own first read.
        return not negotiation.prior_knowledge_allowed(self.cfg, conn.client)

    def enqueue_req(self, conn: Any) -> None:
        if getattr(conn, "rybbit_whole", False) or not self._buffers(conn):
            conn.rybbit_whole = False  # the next request on this connection is read here too
            super().enqueue_req(conn)
            return
        arriving = _Arriving(conn, time.monotonic() + READ_TIMEOUT, self.body_limit)
        conn.sock.setblocking(False)
        self._arriving.append(arriving)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, arriving))
        # Pipelining: gunicorn may already have read (part of) the next request after the last
        # one; those bytes no longer make the socket readable, so judge them now.
        leftover = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        if leftover:
            self._guarded(self._judge, arriving, leftover)

    def _on_readable(self, arriving: _Arriving, sock: Any) -> None:
        self._guarded(self._read_more, arriving)

    def _guarded(self, step: Any, arriving: _Arriving, *args: Any) -> None:
        try:
            step(arriving, *args)
        except Exception:  # this runs in the worker's event loop: one connection, not all
            self.log.exception("error while reading a request; connection closed")
            self._drop(arriving)

    def _read_more(self, arriving: _Arriving) -> None:
        try:
            data = arriving.conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(arriving)
            return
        if not data:  # the client went away before finishing its request
            self._drop(arriving)
            return
        self._judge(arriving, data)

    def _judge(self, arriving: _Arriving, data: bytes) -> None:
        """Take more bytes of the request and act: hand it over whole, refuse it, or wait."""
        arriving.receive(data)
        state = arriving.state()
        if state == "whole":
            self._hand_over(arriving)
        elif state in _REFUSALS:
            self.log.debug("a request was answered in the event loop: %s", state)
            self._refuse(arriving, _REFUSALS[state])
        elif arriving.wants_continue():
            with contextlib.suppress(OSError):
                arriving.conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _refuse(self, arriving: _Arriving, response: bytes) -> None:
        """Answer and stop sending. The connection stays open while the client is still
        sending (discarded, up to ``_DISCARD`` bytes and within the read deadline): closing it
        with unread bytes would reset it, and the client might never read the answer."""
        sock = arriving.conn.sock
        try:
            sock.send(response)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(arriving)
            return
        arriving.body = 0
        self.poller.modify(sock, selectors.EVENT_READ, partial(self._discard, arriving))

    def _discard(self, arriving: _Arriving, sock: Any) -> None:
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        arriving.body += len(data)
        if not data or arriving.body > _DISCARD:
            self._drop(arriving)

    def _forget(self, arriving: _Arriving) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.poller.unregister(arriving.conn.sock)
        with contextlib.suppress(ValueError):
            self._arriving.remove(arriving)

    def _drop(self, arriving: _Arriving) -> None:
        if arriving.dropped:
            return
        arriving.dropped = True
        self._forget(arriving)
        self.nr_conns -= 1
        with contextlib.suppress(OSError):
            arriving.conn.close()

    def _hand_over(self, arriving: _Arriving) -> None:
        """Give the whole request to a thread, with gunicorn's parser reading the bytes we
        received before the socket."""
        self._forget(arriving)
        conn = arriving.conn
        conn.init()  # a plain socket here (see _buffers): makes the parser, sets blocking
        conn.sock.setblocking(True)
        # Backstop: the request is whole, so the thread should never wait on the client.
        bound_reads(conn.sock, READ_TIMEOUT)
        conn.parser.unreader.unread(bytes(arriving.data))
        conn.data_ready = True
        conn.rybbit_whole = True
        self.enqueue_req(conn)

    def murder_pending(self) -> None:
        """Also close connections whose request did not arrive whole in time, and all of them
        once the worker is stopping (a request not yet whole would only delay the stop)."""
        super().murder_pending()
        now = time.monotonic()
        while self._arriving and (not self.alive or self._arriving[0].deadline <= now):
            self._drop(self._arriving[0])


def answer_errors_as_json() -> None:
    """gunicorn answers a request it cannot parse (a bad request line, a header past its
    limits, a broken chunk) with an HTML page of its own, in any worker class. This process's
    gunicorn answers them in the contract's error shape instead: every response of the service
    is JSON. Called once per worker (gunicorn.conf.py's post_worker_init); gunicorn has no
    setting for it, so its one error writer is replaced here."""
    gunicorn_util.write_error = _write_json_error


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's replacement. ``mesg`` echoes the client's bytes, so only
    the status's reason phrase is said."""
    phrase = reason[:1] + reason[1:].lower()  # "Bad Request" -> "Bad request"
    status = f"{status_int} {reason}"
    sock.sendall(_refusal(status, phrase))

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
default 30) or its connection is closed. Bodies stop being buffered past ``buffer_limit``
(the app's largest accepted body plus room for headers): the request then goes to a thread,
which answers 413 after reading at most that much more.

gunicorn.conf.py loads this file by path, outside the ``rybbit`` package, so the master does not
import the app; it therefore imports only gunicorn, h11 and the standard library.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import time
from functools import partial
from typing import Any

import h11
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

READ_TIMEOUT = float(os.environ.get("RYBBIT_REQUEST_READ_TIMEOUT", "30"))
_RECV_SIZE = 64 * 1024
_HEADROOM = 64 * 1024  # request line and headers, beside the body
_DEFAULT_BODY_LIMIT = 1024 * 1024
_BAD_BODY = b'{"success": false, "error": "Bad request"}'
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_BAD_BODY)).encode() + b"\r\n\r\n" + _BAD_BODY
)


class _Arriving:
    """A request being read: its bytes so far, h11's view of its framing, and its deadline."""

    __slots__ = ("conn", "data", "framing", "deadline", "continued", "dropped")

    def __init__(self, conn: Any, deadline: float, limit: int) -> None:
        self.conn = conn
        self.data = bytearray()
        # Headers as large as a whole request may be buffered too: past h11's default (16 KiB)
        # they would otherwise count as malformed.
        self.framing = h11.Connection(h11.SERVER, max_incomplete_event_size=limit)
        self.deadline = deadline
        self.continued = False
        self.dropped = False

    def state(self, limit: int) -> str:
        """``"whole"`` when a thread can serve the request without waiting for the client
        (it has fully arrived, or it is over ``limit`` bytes and gunicorn or the app will
        refuse it from what is here), ``"partial"`` while more is to come, ``"malformed"``
        when it is not HTTP/1.x h11 can frame (a thread might wait on it forever)."""
        try:
            while True:
                event = self.framing.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return "whole"
                if event is h11.PAUSED:
                    return "whole"
        except h11.RemoteProtocolError:  # also headers over ``limit``: gunicorn would wait
            return "malformed"
        # Past the limit in the body (the headers are complete, or h11 would have raised):
        # the app refuses it (413) from what is here.
        return "whole" if len(self.data) > limit else "partial"

    def wants_continue(self) -> bool:
        """True once, when the client waits for ``100 Continue`` before sending its body."""
        if self.continued or not self.framing.they_are_waiting_for_100_continue:
            return False
        self.continued = True
        return True


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
        self.buffer_limit = (body or _DEFAULT_BODY_LIMIT) + _HEADROOM

    def _buffers(self, conn: Any) -> bool:
        """Whether this connection's requests are read here first: plain HTTP/1.x, with no
        bytes of the next request already read by gunicorn (pipelining)."""
        if self.cfg.is_ssl or conn.is_http2:
            return False
        if negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            return False  # HTTP/2 negotiation needs gunicorn's own first read
        parser = conn.parser
        return parser is None or not parser.unreader.buf.getvalue()

    def enqueue_req(self, conn: Any) -> None:
        if getattr(conn, "rybbit_whole", False) or not self._buffers(conn):
            conn.rybbit_whole = False  # the next request on this connection is read here too
            super().enqueue_req(conn)
            return
        arriving = _Arriving(conn, time.monotonic() + READ_TIMEOUT, self.buffer_limit)
        conn.sock.setblocking(False)
        self._arriving.append(arriving)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, arriving))

    def _on_readable(self, arriving: _Arriving, sock: Any) -> None:
        try:
            self._read_more(arriving)
        except Exception:  # this runs in the worker's event loop: one connection, not all
            self.log.exception("error while reading a request; connection closed")
            self._drop(arriving)

    def _read_more(self, arriving: _Arriving) -> None:
        conn = arriving.conn
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(arriving)
            return
        if not data:  # the client went away before finishing its request
            self._drop(arriving)
            return
        arriving.data += data
        arriving.framing.receive_data(data)
        state = arriving.state(self.buffer_limit)
        if state == "whole":
            self._hand_over(arriving)
        elif state == "malformed":
            self.log.debug("a request that is not HTTP/1.x was answered 400")
            with contextlib.suppress(OSError):
                conn.sock.send(_BAD_REQUEST)
            self._drop(arriving)
        elif arriving.wants_continue():
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")

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

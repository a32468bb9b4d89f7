"""Blocking work off a gevent worker's event loop.

Under gevent, a call into SQLite blocks the whole worker: no other request runs until it
returns. For the embedded store's writes, that would also end group commit (no other request
gets to queue up its events meanwhile). So those writes run in the hub's native thread pool,
and the background threads of the embedded store are real OS threads. Network I/O (pymongo,
Redis) is left on the event loop, where it already yields: its sockets belong to the loop's
thread and must not be used from another.

Without gevent (threads, the CLI, tests) everything here is the plain thing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")


def gevent_active() -> bool:
    """The process runs gevent's monkey-patched threading (a gevent gunicorn worker)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


def off_loop(function: Callable[[Any], Result]) -> Callable[[Any], Result]:
    """``function``, run in the hub's thread pool when gevent is active (the calling greenlet
    waits for it while the others run); else ``function`` itself."""
    if not gevent_active():
        return function
    import gevent

    def in_pool(argument: Any) -> Result:
        return gevent.get_hub().threadpool.apply(function, (argument,))  # type: ignore[no-any-return]

    return in_pool


def let_others_run() -> None:
    """Under gevent, one turn of the event loop: the greenlets that are ready run until they
    wait, then the caller goes on. Elsewhere nothing (threads run anyway)."""
    if gevent_active():
        import gevent

        gevent.sleep(0)


def os_thread_local() -> Any:
    """A ``threading.local`` per OS thread, also under gevent (whose patched one is per
    greenlet)."""
    if gevent_active():
        from gevent import monkey

        return monkey.get_original("_thread", "_local")()
    return threading.local()


def os_thread(
    target: Callable[..., Any], name: str, args: tuple[Any, ...] = ()
) -> threading.Thread:
    """A daemon thread that is a real OS thread, also under gevent (whose patched Thread is a
    greenlet, which would never run when started from a pool thread)."""
    if gevent_active():
        from gevent import monkey

        thread_class = monkey.get_original("threading", "Thread")
        return thread_class(target=target, name=name, args=args, daemon=True)  # type: ignore[no-any-return]
    return threading.Thread(target=target, name=name, args=args, daemon=True)

"""fsync without stopping a gevent worker, and the small durable-file chores around it.

Under gevent monkey-patching every "thread" is a greenlet on one OS thread: an fdatasync
(0.2 ms to several ms) run there would stop every other request of the worker. When threading
is patched, the call goes to the hub's thread pool instead, and only the calling greenlet waits.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path


def _gevent_patched() -> bool:
    if "gevent" not in sys.modules:  # never import gevent into a process that does not use it
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def _blocking(call: Callable[[int], None], fd: int) -> None:
    if _gevent_patched():
        import gevent

        gevent.get_hub().threadpool.apply(call, (fd,))
    else:
        call(fd)


def fdatasync(fd: int) -> None:
    """Data (and the size) of ``fd`` on disk."""
    _blocking(os.fdatasync, fd)


def fsync(fd: int) -> None:
    _blocking(os.fsync, fd)


def lock_exclusive(fd: int) -> None:
    """flock(LOCK_EX), waiting for another process's hold without stopping other greenlets."""
    _blocking(lambda locked: fcntl.flock(locked, fcntl.LOCK_EX), fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: after a crash it holds the old or the new bytes, whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

"""The spool writer: append records, return once they are on disk, share the fsyncs.

``Spool.append`` writes the caller's framed records to the live segment under a lock (a few
microseconds), then waits until an fdatasync that began after its write has finished. The
syncs are grouped like a group commit (the house pattern of rybbit/group_commit.py): the first
caller to find no sync running starts one for everything written so far; callers arriving
meanwhile queue behind it, and the next one of them syncs for all of them. One fdatasync
(about 0.2 ms here) thus acknowledges as many records as arrived while the previous one ran.

An fdatasync that fails leaves the kernel's page cache in an unknown state (its dirty pages may
have been dropped), so the spool does not retry it: it is marked broken and every append
raises ``SpoolBroken`` from then on. Nothing unacknowledged was promised.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import durable
from .directory import Position, SpoolDir
from .segments import HEADER_SIZE, encode, encode_header

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolError(Exception):
    """Base class of the spool's own errors."""


class SpoolFull(SpoolError):
    """Accepting these records would pass the spool's quota: answer 503 and retry later."""

    def __init__(self, unshipped_bytes: int, quota_bytes: int) -> None:
        super().__init__(
            f"spool full: {unshipped_bytes} bytes unshipped, quota {quota_bytes} bytes"
        )
        self.unshipped_bytes = unshipped_bytes
        self.quota_bytes = quota_bytes


class SpoolBroken(SpoolError):
    """A write or fsync failed in a way the spool cannot recover from; nothing is accepted."""


class SpoolClosed(SpoolError):
    """The spool was closed."""


class _Waiter:
    """An append waiting for the sync that covers its bytes (``target``)."""

    __slots__ = ("target", "wake", "lead", "error")

    def __init__(self, target: int) -> None:
        self.target = target
        self.wake = threading.Lock()  # held until its leader releases it: a one-shot signal
        self.wake.acquire()
        self.lead = False
        self.error: BaseException | None = None


class Spool:
    """This process's spool: an owned directory of segments (see rybbit/spool/__init__.py).

    ``quota_bytes`` bounds the framed bytes appended but not yet shipped (or dead-lettered);
    disk use can pass it by the shipped part of the oldest segment. ``fsync=False`` skips the
    fdatasync (tests and benchmarks only: records are then not durable on return).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        quota_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
    ) -> None:
        if quota_bytes <= 0 or segment_bytes <= HEADER_SIZE:
            raise ValueError("quota_bytes and segment_bytes must be positive")
        self.quota_bytes = quota_bytes
        self.segment_bytes = segment_bytes
        self._fsync = fsync
        self.directory = SpoolDir.create(root)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # no sync running (for close)
        self._closed = False
        self._broken: BaseException | None = None
        # Writing.
        self._seq = 0
        self._fd = -1
        self._size = 0
        self._written = 0  # framed bytes written, all segments (a logical clock)
        self._written_records = 0
        # Syncing: descriptors with writes not yet synced (and whether to close them after).
        self._unsynced: dict[int, bool] = {}
        self._dir_unsynced = False
        self._syncing = False
        self._waiters: collections.deque[_Waiter] = collections.deque()  # oldest first
        self._durable = 0
        self._durable_records = 0
        self._durable_pos: Position = (1, HEADER_SIZE)
        # (durable records count, monotonic time) per sync, for the age of the oldest record.
        self._sync_times: collections.deque[tuple[int, float]] = collections.deque()
        # Shipping, as the shipper reports it.
        self._shipped_bytes = 0
        self._shipped_records = 0
        self.fsyncs = 0
        self._listeners: list[Callable[[], None]] = []
        with self._lock:
            self._open_segment(1)
            self._durable_pos = (self._seq, self._size)

    @property
    def path(self) -> Path:
        return self.directory.path

    # Appending -------------------------------------------------------------------------

    def append(self, records: Sequence[bytes]) -> None:
        """Return once ``records`` are durable; SpoolFull past the quota (nothing written)."""
        if not records:
            return
        data = encode(records)
        with self._lock:
            self._check_usable()
            unshipped = self._written - self._shipped_bytes
            if unshipped + len(data) > self.quota_bytes:
                raise SpoolFull(unshipped, self.quota_bytes)
            if self._size > HEADER_SIZE and self._size + len(data) > self.segment_bytes:
                self._roll()
            self._write(data)
            self._written_records += len(records)
            target = self._written
            if not self._fsync:
                self._mark_durable(self._written, self._written_records, (self._seq, self._size))
        if self._fsync:
            self._await_durable(target)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            # Leave no torn frame before the records of later appends.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as undo:
                self._broken = undo
                raise SpoolBroken(f"spool write failed and could not be undone: {undo}") from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(self._written - self._shipped_bytes, self.quota_bytes) from exc
            raise
        self._size += len(data)
        self._written += len(data)
        self._unsynced[self._fd] = False

    def _roll(self) -> None:
        old = self._fd
        # A sync running now may hold ``old``: never close it under its feet. The next sync
        # flushes it (again, at worst: cheap) and closes it.
        if old in self._unsynced or self._syncing:
            self._unsynced[old] = True
        else:
            os.close(old)
        self._open_segment(self._seq + 1)

    def _open_segment(self, seq: int) -> None:
        path = self.directory.segment_path(seq)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        header = encode_header()
        os.write(fd, header)
        self._fd, self._seq, self._size = fd, seq, len(header)
        self._unsynced[fd] = False
        self._dir_unsynced = True  # the new file's name must reach the disk too

    def _await_durable(self, target: int) -> None:
        with self._lock:
            if self._durable >= target:
                return
            self._check_usable(closing_ok=True)
            if self._syncing:  # queue behind the running sync; woken once, by its leader
                waiter = _Waiter(target)
                self._waiters.append(waiter)
            else:
                self._syncing = True
                waiter = None
        if waiter is not None:
            waiter.wake.acquire()
            if not waiter.lead:
                if waiter.error is not None:
                    raise SpoolBroken(f"spool fsync failed: {waiter.error}") from waiter.error
                return
        self._lead_syncs()

    def _lead_syncs(self) -> None:
        """Sync everything written so far, wake the appends it covers, and hand the next sync
        to the oldest append it does not cover (so each waiter is woken exactly once)."""
        with self._lock:
            upto, upto_records, upto_pos = self._written, self._written_records, self._position()
            fds, self._unsynced = self._unsynced, {}
            sync_dir, self._dir_unsynced = self._dir_unsynced, False
        error: BaseException | None = None
        try:
            for fd in fds:
                durable.fdatasync(fd)
            if sync_dir:
                durable.fsync_dir(self.directory.path)
        except BaseException as exc:  # waiters must be woken whatever happened
            error = exc
        finally:
            for fd, close in fds.items():
                if close:
                    os.close(fd)
        with self._lock:
            self.fsyncs += 1
            if error is None:
                self._mark_durable(upto, upto_records, upto_pos)
            elif self._broken is None:
                self._broken = error
            waiters = self._waiters
            while waiters and (error is not None or waiters[0].target <= upto):
                done = waiters.popleft()
                done.error = error
                done.wake.release()
            if waiters:
                successor = waiters.popleft()
                successor.lead = True
                successor.wake.release()
            else:
                self._syncing = False
                self._idle.notify_all()
        if error is not None:
            raise SpoolBroken(f"spool fsync failed: {error}") from error

    def _mark_durable(self, upto: int, records: int, position: Position) -> None:
        self._durable, self._durable_records, self._durable_pos = upto, records, position
        if not self._sync_times or self._sync_times[-1][0] < records:
            self._sync_times.append((records, time.monotonic()))
        for listener in self._listeners:
            listener()

    def _position(self) -> Position:
        return (self._seq, self._size)

    def _check_usable(self, closing_ok: bool = False) -> None:
        if self._broken is not None:
            raise SpoolBroken(f"spool unusable after an earlier failure: {self._broken}")
        if self._closed and not closing_ok:
            raise SpoolClosed("spool closed")

    # What the shipper reads and reports -------------------------------------------------

    def durable_position(self) -> Position:
        """The end of the acknowledged records: (segment seq, offset), a frame boundary."""
        return self._durable_pos

    def on_durable(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (cheap, non-blocking) each time more records became durable."""
        self._listeners.append(listener)

    def note_shipped(self, records: int, nbytes: int) -> None:
        """The shipper moved its checkpoint past ``records`` records of ``nbytes`` framed bytes
        (damaged bytes it skipped included): their room in the quota is free again."""
        with self._lock:
            self._shipped_records += records
            self._shipped_bytes += nbytes
            times = self._sync_times
            while times and times[0][0] <= self._shipped_records:
                times.popleft()

    def backlog(self) -> tuple[int, int, float]:
        """Unshipped (records, framed bytes, seconds since the oldest became durable)."""
        records = self._durable_records - self._shipped_records
        nbytes = self._durable - self._shipped_bytes
        times = self._sync_times
        age = time.monotonic() - times[0][1] if records > 0 and times else 0.0
        return max(records, 0), max(nbytes, 0), age

    def all_shipped(self) -> bool:
        return self._shipped_bytes >= self._written

    # Closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting records. The directory is removed when all was shipped; otherwise it
        stays, unlocked, for the next shipper to adopt."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            target = self._written
        if self._fsync:
            # Through the group protocol, as one more waiter: an append still in flight must
            # never lead a sync while this thread syncs its file outside of it.
            with contextlib.suppress(SpoolBroken):
                self._await_durable(target)
        with self._lock:
            while self._syncing:
                self._idle.wait()
            fds = set(self._unsynced) | {self._fd}
            self._unsynced, self._fd = {}, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if self.all_shipped():
            self.directory.remove()
        else:
            self.directory.release()

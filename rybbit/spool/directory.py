"""Spool directories: one per writing process, owned through a lock that dies with it.

Layout under the spool root::

    <root>/<pid>-<random>/owner.lock        held with flock(LOCK_EX) by the owner, for its life
                         /000000000001.seg   segments, oldest first (segments.py)
                         /checkpoint.json    how far shipping got: {"segment": n, "offset": m}
    <root>/dead-letter.jsonl                 records the store refused (deadletter.py)

The kernel drops a flock when its holder dies, kill -9 included, so a directory whose lock can
be taken has no live owner: a shipper takes the lock (adopts it), ships what is left and
removes it. A directory is created under a dot-name and renamed into place with its lock
already held, so no scan ever sees a new directory unlocked. flock is only reliable on a
local file system: keep the root off NFS.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from .durable import fsync_dir, write_atomically
from .segments import HEADER_SIZE, segment_name, segment_seq

log = logging.getLogger(__name__)

LOCK_NAME = "owner.lock"
CHECKPOINT_NAME = "checkpoint.json"
# A dot-directory with no lock file is a creation cut short; older than this, it is removed.
STALE_NEW_SECONDS = 60.0

Position = tuple[int, int]  # (segment seq, offset in it)


class SpoolDir:
    """A spool directory whose lock this process holds."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, root: str | os.PathLike[str]) -> SpoolDir:
        """A new, empty directory under ``root``, owned by this process."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        staging = root / f".new-{name}"
        staging.mkdir(mode=0o700)
        fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"pid {os.getpid()} since {time.time():.0f}\n".encode())
        final = root / name
        os.rename(staging, final)
        # The directory itself must survive a crash, or its acknowledged records go with it.
        fsync_dir(root)
        return cls(final, fd)

    @classmethod
    def try_adopt(cls, path: Path) -> SpoolDir | None:
        """Take ``path`` over if its owner is gone; None when it lives (or the dir vanished)."""
        lock_path = path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            # Another adopter is removing it (the lock file goes last but one): the directory
            # is empty, or about to be.
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        # Another adopter may have finished and removed the directory between our open and
        # our lock: then the lock we hold is on an unlinked file and means nothing.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return cls(path, fd)

    def segments(self) -> list[int]:
        """Sequence numbers of the segment files present, oldest first."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(seq for seq in map(segment_seq, names) if seq is not None)

    def segment_path(self, seq: int) -> Path:
        return self.path / segment_name(seq)

    def load_checkpoint(self) -> Position | None:
        """Where shipping resumes, or None to start at the oldest segment."""
        path = self.path / CHECKPOINT_NAME
        try:
            data = json.loads(path.read_bytes())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # Written with fsync + rename, so this is disk damage. Starting over delivers
            # some records again, which the idempotent sink absorbs; losing them would not be.
            log.warning("spool %s: unreadable checkpoint, shipping from the start", self.path)
            return None

    def store_checkpoint(self, position: Position) -> None:
        seq, offset = position
        body = json.dumps({"segment": seq, "offset": offset}).encode()
        write_atomically(self.path / CHECKPOINT_NAME, body)

    def delete_segments_before(self, seq: int) -> None:
        """Remove segments wholly shipped (all below ``seq``)."""
        for old in self.segments():
            if old >= seq:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.segment_path(old))

    def remove(self) -> None:
        """Delete the directory (everything in it was shipped) and let the lock go."""
        for entry in os.listdir(self.path):
            if entry != LOCK_NAME:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / entry)
        # The lock file goes last, while still held, so that no one adopts a half-removed dir.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / LOCK_NAME)
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(self.path)
        self.release()

    def release(self) -> None:
        """Let the lock go, leaving the files for a later adopter."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def first_position(directory: SpoolDir) -> Position:
    """Where shipping starts in ``directory``: its checkpoint, else its oldest segment."""
    checkpoint = directory.load_checkpoint()
    if checkpoint is not None:
        return checkpoint
    segments = directory.segments()
    return (segments[0] if segments else 1, HEADER_SIZE)


def adopt_orphans(root: str | os.PathLike[str], skip: set[str]) -> list[SpoolDir]:
    """Every directory under ``root`` without a live owner, locked by this process now.

    ``skip`` names directories this process already holds. Creations cut short (dot-dirs)
    hold no acknowledged record and are removed once stale.
    """
    root = Path(root)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    adopted: list[SpoolDir] = []
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.name in skip:
            continue
        path = Path(entry.path)
        if entry.name.startswith(".new-"):
            _remove_stale_creation(path)
            continue
        owned = SpoolDir.try_adopt(path)
        if owned is not None:
            log.info("spool: adopted %s, whose owner is gone", path)
            adopted.append(owned)
    return adopted


def _remove_stale_creation(path: Path) -> None:
    lock_path = path / LOCK_NAME
    if not lock_path.exists():
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > STALE_NEW_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        return
    owned = SpoolDir.try_adopt(path)
    if owned is not None:  # its creator died before the rename: nothing was ever written
        owned.remove()

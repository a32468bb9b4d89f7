"""The dead-letter file: records the store refused, kept instead of blocking the rest.

One JSON object a line, appended (several worker processes share the file, each append under
an exclusive flock) and fdatasync'd before the shipper's checkpoint moves past the records::

    {"time": "2026-12-02T18:30:00.123Z", "reason": "...", "spool": "<dir>", "segment": 3,
     "offset": 4096, "record": {...}}

``record`` is the payload parsed as JSON when it is JSON (the events are), else the payload's
bytes in ``record_base64``. Each line stands alone, so a fixed record can be fed back in with
any JSON-lines tool. The records hold the events as the service stored them: keep the file
as private as the store itself.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import durable

FILE_NAME = "dead-letter.jsonl"


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    payload: bytes
    spool: str
    segment: int
    offset: int


def _line(letter: DeadLetter, now: str) -> bytes:
    entry: dict[str, object] = {
        "time": now,
        "reason": letter.reason,
        "spool": letter.spool,
        "segment": letter.segment,
        "offset": letter.offset,
    }
    try:
        entry["record"] = json.loads(letter.payload)
    except ValueError:
        entry["record_base64"] = base64.b64encode(letter.payload).decode("ascii")
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class DeadLetterFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Append ``letters``; they are on disk when this returns."""
        if not letters:
            return
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = b"".join(_line(letter, now) for letter in letters)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            durable.lock_exclusive(fd)  # whole lines, never interleaved with another worker
            view = memoryview(data)
            done = 0
            while done < len(data):
                done += os.write(fd, view[done:])
            durable.fdatasync(fd)
            if created:  # the file's name must survive a crash as well as its lines
                durable.fsync_dir(self.path.parent)
        finally:
            os.close(fd)  # drops the flock

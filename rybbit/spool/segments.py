"""Segment files: the spool's on-disk framing, and a reader that survives damage.

A segment is one append-only file named ``<seq>.seg`` (``seq`` a zero-padded counter, so names
sort in write order). It starts with a 16-byte header, the magic ``RBSPOOL1`` and the creation
time (unix milliseconds, u64 little-endian, used for the age of an adopted backlog), followed
by records, each framed as::

    [u32 length][u32 crc32 of the payload][payload]    (little-endian; length >= 1)

Length and checksum let a reader tell a whole record from a torn or damaged one. The reader
never raises on damage: a record whose frame does not check out is skipped, and so is
everything up to the next frame that does (found by scanning forward byte by byte; a false
match needs a plausible length *and* a matching CRC-32 on random bytes, about 1 in 2**32 per
position). What was skipped is logged (offset and bytes; a "torn tail" when no good record
follows, which is how a crash in the middle of a write looks) and counted. Empty payloads are
not allowed, so that zero-filled space (a file extended by the file system but never written)
never reads as records: crc32(b"") is 0.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"RBSPOOL1"
HEADER = struct.Struct("<8sQ")
HEADER_SIZE = HEADER.size
FRAME = struct.Struct("<II")
FRAME_SIZE = FRAME.size
# A record is one event (or one small batch); anything near this size is a bug upstream.
MAX_RECORD_BYTES = 16 * 1024 * 1024
SUFFIX = ".seg"
# How much a reader asks the kernel for at a time.
READ_CHUNK = 1024 * 1024


def segment_name(seq: int) -> str:
    return f"{seq:012d}{SUFFIX}"


def segment_seq(name: str) -> int | None:
    """The sequence number in a segment file name, or None for any other file."""
    stem, dot, suffix = name.partition(".")
    if not dot or "." + suffix != SUFFIX or not stem.isdigit():
        return None
    return int(stem)


def encode_header(created_ms: int | None = None) -> bytes:
    return HEADER.pack(MAGIC, int(time.time() * 1000) if created_ms is None else created_ms)


def encode(payloads: Sequence[bytes]) -> bytes:
    """The framed bytes of ``payloads``, ready to append; ValueError for an unframeable one."""
    parts: list[bytes] = []
    for payload in payloads:
        size = len(payload)
        if not 0 < size <= MAX_RECORD_BYTES:
            raise ValueError(f"a spool record must have 1 to {MAX_RECORD_BYTES} bytes, not {size}")
        parts.append(FRAME.pack(size, zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


@dataclass
class Chunk:
    """What one read returned: records as (offset, payload), and where the next read starts."""

    records: list[tuple[int, bytes]] = field(default_factory=list)
    end: int = HEADER_SIZE
    skipped_bytes: int = 0


class SegmentReader:
    """Reads the records of one segment file, from any frame boundary up to a limit.

    The limit is the file's size for a segment nobody writes any more, or the durable end the
    writer published for the live segment (a boundary between whole records).
    """

    def __init__(self, path: str | os.PathLike[str], log_damage: bool = True) -> None:
        self.path = Path(path)
        self._log_damage = log_damage
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        head = os.pread(self._fd, HEADER_SIZE, 0)
        self.created_ms: int | None = None
        if len(head) == HEADER_SIZE and head[:8] == MAGIC:
            self.created_ms = HEADER.unpack(head)[1]
        elif head:
            # Records may still follow; the frame checks decide what is readable.
            log.warning("spool segment %s: bad header, reading on", self.path)
        self.skipped_bytes = 0

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(
        self,
        start: int,
        limit: int | None = None,
        max_records: int = 1000,
        max_bytes: int = READ_CHUNK,
    ) -> Chunk:
        """Whole records from ``start`` (a frame boundary) to at most ``limit``.

        Stops after ``max_records`` records or once ``max_bytes`` of payload were read
        (always at least one record when there is one). Damaged bytes are skipped, logged and
        counted in ``skipped_bytes``; ``Chunk.end`` moves past them.
        """
        start = max(start, HEADER_SIZE)
        if limit is None:
            limit = self.size()
        chunk = Chunk(end=start)
        if start >= limit:
            return chunk
        buf = os.pread(self._fd, min(limit - start, max(max_bytes, READ_CHUNK)), start)
        pos = 0  # in buf; buf[0] is file offset ``start``
        payload_bytes = 0
        while len(chunk.records) < max_records and payload_bytes < max_bytes:
            here = start + pos
            if here >= limit:
                break
            if len(buf) - pos < FRAME_SIZE and here + FRAME_SIZE <= limit:
                if chunk.records:
                    break  # the next read starts at this frame
                buf = os.pread(self._fd, min(limit - here, READ_CHUNK), here)
                start, pos = here, 0
            length = crc = 0
            if len(buf) - pos >= FRAME_SIZE:
                length, crc = FRAME.unpack_from(buf, pos)
            frame_end = here + FRAME_SIZE + length
            if 0 < length <= MAX_RECORD_BYTES and frame_end <= limit:
                if pos + FRAME_SIZE + length > len(buf):  # a whole record past the buffer
                    if chunk.records:
                        break
                    buf = os.pread(self._fd, FRAME_SIZE + length, here)
                    start, pos = here, 0
                payload = buf[pos + FRAME_SIZE : pos + FRAME_SIZE + length]
                if len(payload) == length and zlib.crc32(payload) == crc:
                    chunk.records.append((here, payload))
                    payload_bytes += length
                    pos += FRAME_SIZE + length
                    continue
            # Damage at ``here``: find the next good frame before ``limit``.
            resume = self._resync(here, limit)
            skipped = resume - here
            self.skipped_bytes += skipped
            chunk.skipped_bytes += skipped
            if resume >= limit:
                if self._log_damage:
                    log.warning(
                        "spool segment %s: torn tail, skipped %d bytes from offset %d",
                        self.path,
                        skipped,
                        here,
                    )
                chunk.end = limit
                return chunk
            if self._log_damage:
                log.warning(
                    "spool segment %s: corrupt record, skipped %d bytes from offset %d to %d",
                    self.path,
                    skipped,
                    here,
                    resume,
                )
            buf = os.pread(self._fd, min(limit - resume, max(max_bytes, READ_CHUNK)), resume)
            start, pos = resume, 0
        chunk.end = start + pos
        return chunk

    def _resync(self, bad: int, limit: int) -> int:
        """The offset of the first whole, checksummed frame after ``bad``, or ``limit``."""
        rest = os.pread(self._fd, limit - bad, bad)
        end = len(rest)
        unpack = FRAME.unpack_from
        for pos in range(1, end - FRAME_SIZE):
            length, crc = unpack(rest, pos)
            stop = pos + FRAME_SIZE + length
            if 0 < length <= MAX_RECORD_BYTES and stop <= end:
                if zlib.crc32(rest[pos + FRAME_SIZE : stop]) == crc:
                    return bad + pos
        return limit


def iter_records(
    path: str | os.PathLike[str], start: int = HEADER_SIZE, limit: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Every readable record of a segment file as (offset, payload); damage is skipped and
    logged (see the module docstring)."""
    with SegmentReader(path) as reader:
        end = reader.size() if limit is None else limit
        position = start
        while position < end:
            chunk = reader.read(position, end)
            yield from chunk.records
            if chunk.end <= position:
                break
            position = chunk.end

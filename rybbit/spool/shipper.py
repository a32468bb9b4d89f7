"""The shipper: deliver spooled records to the store in batches, in order, at least once.

A background thread (a greenlet when gevent has patched threading: ``threading.Thread`` then
is one) reads the records of this process's spool, up to its durable end, and of every spool
directory it adopted (their owners died), in write order per directory, and hands them to
``deliver`` in batches. ``deliver`` returns one outcome per record:

- ``SHIPPED``: stored (a duplicate-key error means stored by an earlier attempt: SHIPPED);
- ``Retry(reason)``: not stored for a passing reason (the store is down); the same record is
  delivered again after a backoff (0.1 s doubling to 5 s by default);
- ``Refused(reason)``: the store will never take it (a poison record): it goes to the
  dead-letter file (deadletter.py) and shipping goes on.

``deliver`` raising counts as ``Retry`` for the whole batch. The checkpoint moves over the
longest prefix of the batch whose records are all shipped or refused; the records after the
first Retry are delivered again, even those the store took.

**deliver must be idempotent.** A crash between a delivery and the checkpoint that follows it
(or a Retry in the middle of a batch) delivers the same records again. Give every record a
unique ``_id`` before it is spooled, insert unordered, and count duplicate-key errors as
SHIPPED: then no record is stored twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .deadletter import FILE_NAME as DEAD_LETTER_NAME
from .deadletter import DeadLetter, DeadLetterFile
from .directory import Position, SpoolDir, adopt_orphans, first_position
from .segments import FRAME_SIZE, HEADER_SIZE, SegmentReader
from .writer import Spool

log = logging.getLogger(__name__)


class Shipped:
    """The store has the record."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SHIPPED"


SHIPPED = Shipped()


@dataclass(frozen=True, slots=True)
class Retry:
    """Not stored this time; try the same record again later."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Refused:
    """The store will never take this record: dead-letter it."""

    reason: str


Outcome = Shipped | Retry | Refused
# Returns one outcome per payload, in order; None means every payload was shipped.
Deliver = Callable[[list[bytes]], Sequence[Outcome] | None]


@dataclass(frozen=True)
class ShipperStats:
    backlog_events: int
    backlog_bytes: int
    oldest_age_seconds: float
    shipped_total: int
    refused_total: int
    ship_errors_total: int
    last_error: str | None
    adopted_spools: int
    skipped_bytes_total: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Batch:
    seq: int
    start: int  # offset of the first record (or of skipped bytes before it)
    end: int  # offset after the last record and any damage skipped after it
    records: list[tuple[int, bytes]]


class _Source:
    """One spool directory being shipped: this process's own, or an adopted one."""

    def __init__(self, directory: SpoolDir, spool: Spool | None) -> None:
        self.directory = directory
        self.spool = spool
        self.position: Position = first_position(directory)
        self._reader: SegmentReader | None = None
        self._reader_seq = -1
        # Adopted directories only (the own spool keeps its own counts): known after count().
        self.records_left = 0
        self.bytes_left = 0
        self.created_ms: int | None = None

    @property
    def own(self) -> bool:
        return self.spool is not None

    def count(self) -> None:
        """Count an adopted directory's unshipped records (one read; damage logged later)."""
        records = nbytes = 0
        seq, offset = self.position
        for other in self.directory.segments():
            if other < seq:
                continue
            start = offset if other == seq else HEADER_SIZE
            reader = SegmentReader(self.directory.segment_path(other), log_damage=False)
            with reader:
                if self.created_ms is None:
                    self.created_ms = reader.created_ms
                size = reader.size()
                nbytes += max(size - start, 0)
                while start < size:
                    chunk = reader.read(start, size, max_records=10_000)
                    records += len(chunk.records)
                    if chunk.end <= start:
                        break
                    start = chunk.end
        self.records_left, self.bytes_left = records, nbytes

    def _reader_for(self, seq: int) -> SegmentReader | None:
        if self._reader_seq != seq:
            self.close_reader()
            try:
                self._reader = SegmentReader(self.directory.segment_path(seq))
            except FileNotFoundError:
                return None
            self._reader_seq = seq
            if not self.own:
                self.created_ms = self._reader.created_ms
        return self._reader

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader, self._reader_seq = None, -1

    def next_batch(self, max_records: int, max_bytes: int) -> _Batch | Position | None:
        """The next records to ship; or the position where the next segment starts, when the
        current one is wholly read; or None when there is nothing to ship now (own spool
        caught up) or ever again (adopted directory done)."""
        seq, offset = self.position
        limit: int | None = None
        if self.spool is not None:
            durable_seq, durable_offset = self.spool.durable_position()
            if (seq, offset) >= (durable_seq, durable_offset):
                return None
            if seq == durable_seq:
                limit = durable_offset
        reader = self._reader_for(seq)
        if reader is not None:
            chunk = reader.read(offset, limit, max_records=max_records, max_bytes=max_bytes)
            if chunk.records or chunk.end > offset:
                return _Batch(seq, offset, chunk.end, chunk.records)
        later = [other for other in self.directory.segments() if other > seq]
        if later:
            return (later[0], HEADER_SIZE)
        return None


class Shipper:
    """Ships ``own_spool`` and the orphaned spools under ``root`` through ``deliver``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        own_spool: Spool | None,
        deliver: Deliver,
        batch_size: int = 1000,
        batch_bytes: int = 4 * 1024 * 1024,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        adopt_interval: float = 10.0,
        idle_poll: float = 0.5,
        linger: float = 0.02,
        dead_letter_path: str | os.PathLike[str] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self._deliver = deliver
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.adopt_interval = adopt_interval
        self.idle_poll = idle_poll
        self.linger = linger
        self.dead_letters = DeadLetterFile(dead_letter_path or self.root / DEAD_LETTER_NAME)
        # Called by the shipping thread after each attempt (shipped, failed or idle), once the
        # counters and the backlog include it: metrics read stats() there.
        self._on_progress = on_progress
        self._own = _Source(own_spool.directory, own_spool) if own_spool is not None else None
        self._adopted: list[_Source] = []
        self._uncounted: list[_Source] = []
        self._turn = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._urgent = threading.Event()  # a flush or stop waits: no lingering
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._next_adoption = 0.0
        # Counters (read by stats() from any thread; written by the shipping thread only).
        self.shipped_total = 0
        self.refused_total = 0
        self.ship_errors_total = 0
        self.last_error: str | None = None
        self.delivered_batches = 0
        self._skipped_done = 0  # damaged bytes skipped in segments no longer open
        if own_spool is not None:
            own_spool.on_durable(self._wake.set)

    # Control ---------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt the orphans present now, then ship in the background."""
        if self._thread is not None:
            return
        self._adopt()
        self._thread = threading.Thread(target=self._run, name="rybbit-spool-shipper", daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every record appended before this call, and every adopted record known
        now, was shipped (or dead-lettered); False if ``timeout`` passed first."""
        target = self._own.spool.durable_position() if self._own and self._own.spool else None
        pending = {id(source) for source in self._adopted}
        self._urgent.set()
        self._wake.set()

        def done() -> bool:
            if target is not None and self._own is not None and self._own.position < target:
                return False
            return not pending.intersection(id(source) for source in self._adopted)

        with self._progress:
            return self._progress.wait_for(done, timeout)

    def stop(self, timeout: float) -> bool:
        """Ship what can be shipped within ``timeout``, then stop; True if all was shipped."""
        if self._thread is None:
            return False
        shipped = self.flush(timeout)
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        self._thread.join(max(timeout, 1.0))
        if self._thread.is_alive():  # stuck in deliver: leave its directories to it
            log.warning("spool shipper: did not stop within %.1f s", timeout)
            return False
        self._thread = None
        for source in self._adopted:
            source.close_reader()
            source.directory.release()  # what is left goes to the next adopter
        self._adopted = []
        if self._own is not None:
            self._own.close_reader()
        return shipped

    def stats(self) -> ShipperStats:
        """Backlog and counters; no file is read."""
        events = nbytes = 0
        age = 0.0
        if self._own is not None and self._own.spool is not None:
            events, nbytes, age = self._own.spool.backlog()
        now_ms = time.time() * 1000
        for source in list(self._adopted):
            events += source.records_left
            nbytes += source.bytes_left
            if source.created_ms is not None:
                age = max(age, (now_ms - source.created_ms) / 1000)
        readers = [s._reader for s in [self._own, *self._adopted] if s and s._reader]
        return ShipperStats(
            backlog_events=events,
            backlog_bytes=nbytes,
            oldest_age_seconds=round(age, 3),
            shipped_total=self.shipped_total,
            refused_total=self.refused_total,
            ship_errors_total=self.ship_errors_total,
            last_error=self.last_error,
            adopted_spools=len(self._adopted),
            skipped_bytes_total=self._skipped_done + sum(r.skipped_bytes for r in readers),
        )

    # The shipping thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.backoff_initial
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_adoption:
                    self._adopt()
                while self._uncounted:
                    self._uncounted.pop().count()
                outcome = self._ship_once()
            except Exception as exc:  # a bug or a disk error must not end shipping for good
                log.exception("spool shipper: unexpected error")
                self.last_error = f"{type(exc).__name__}: {exc}"
                outcome = "retry"
            self._report()
            if outcome == "progress":
                backoff = self.backoff_initial
                # Under steady load too: the next shipment waits to fill up rather than
                # taking the few records that arrived while this one shipped (a small insert
                # costs the store nearly as much as a full one).
                self._linger()
                continue
            if outcome == "retry":
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            backoff = self.backoff_initial
            self._urgent.clear()  # caught up: what a flush waited for was shipped
            self._wake.wait(self.idle_poll)
            self._wake.clear()
            self._linger()

    def _report(self) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress()
        except Exception:  # metrics must never stop shipping
            log.exception("spool shipper: on_progress failed")

    def _linger(self) -> None:
        """Let a trickle of new records gather into one delivery (one store round trip for
        many records, like Kafka's linger.ms): wait up to ``linger`` unless a full batch is
        there already or someone waits for the shipping."""
        if self.linger <= 0 or self._own is None or self._own.spool is None or self._adopted:
            return  # (the spools of dead workers are shipped as fast as they can be)
        if self._own.spool.backlog()[0] >= self.batch_size:
            return
        self._urgent.wait(self.linger)

    def _adopt(self) -> None:
        self._next_adoption = time.monotonic() + self.adopt_interval
        held = {source.directory.name for source in self._adopted}
        if self._own is not None:
            held.add(self._own.directory.name)
        for directory in adopt_orphans(self.root, held):
            source = _Source(directory, None)
            source.bytes_left = sum(
                max(self._size(directory.segment_path(seq)) - HEADER_SIZE, 0)
                for seq in directory.segments()
            )
            self._adopted.append(source)
            self._uncounted.append(source)

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _sources(self) -> list[_Source]:
        return [*([self._own] if self._own is not None else []), *self._adopted]

    def _ship_once(self) -> str:
        """Ship one batch from the next source with records: 'progress', 'retry' or 'idle'."""
        sources = self._sources()
        for step in range(len(sources)):
            source = sources[(self._turn + step) % len(sources)]
            found = source.next_batch(self.batch_size, self.batch_bytes)
            if found is None:
                if not source.own:
                    self._finish(source)
                    return "progress"
                continue
            self._turn = (self._turn + step + 1) % len(sources)
            if isinstance(found, tuple):
                self._checkpoint(source, found, records=0, nbytes=0)
                return "progress"
            return self._ship(source, found)
        return "idle"

    def _ship(self, source: _Source, batch: _Batch) -> str:
        payloads = [payload for _, payload in batch.records]
        outcomes: Sequence[Outcome] | None = None
        error: str | None = None
        if payloads:
            try:
                outcomes = self._deliver(payloads)
                if outcomes is not None and len(outcomes) != len(payloads):
                    error = f"deliver returned {len(outcomes)} outcomes for {len(payloads)}"
                    outcomes = [Retry(error)] * len(payloads)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                outcomes = [Retry(error)] * len(payloads)
            self.delivered_batches += 1
        if outcomes is None:
            outcomes = [SHIPPED] * len(payloads)
        letters: list[DeadLetter] = []
        done = 0
        for (offset, payload), outcome in zip(batch.records, outcomes, strict=True):
            if isinstance(outcome, Retry):
                error = error or f"retry: {outcome.reason}"
                break
            if isinstance(outcome, Refused):
                letters.append(
                    DeadLetter(outcome.reason, payload, source.directory.name, batch.seq, offset)
                )
            done += 1
        if done == len(batch.records):
            end = batch.end  # past any damage skipped after the last record too
        elif done:
            last_offset, last_payload = batch.records[done - 1]
            end = last_offset + FRAME_SIZE + len(last_payload)
        else:
            end = batch.start
        if letters:
            self.dead_letters.write(letters)  # durable before the checkpoint passes them
            log.warning(
                "spool shipper: %d record(s) refused by the store, dead-lettered in %s (%s)",
                len(letters),
                self.dead_letters.path,
                letters[0].reason[:200],
            )
        if end > batch.start:
            self._checkpoint(source, (batch.seq, end), records=done, nbytes=end - batch.start)
            self.shipped_total += done - len(letters)
            self.refused_total += len(letters)
        if error is not None:
            self.ship_errors_total += 1
            self.last_error = error
            log.warning("spool shipper: delivery failed, will retry: %s", error[:200])
            return "retry"
        return "progress"

    def _checkpoint(self, source: _Source, position: Position, records: int, nbytes: int) -> None:
        moved_segment = position[0] != source.position[0]
        source.directory.store_checkpoint(position)
        if moved_segment:
            if source._reader is not None:
                self._skipped_done += source._reader.skipped_bytes
            source.close_reader()
            source.directory.delete_segments_before(position[0])
        with self._progress:
            source.position = position
            if source.spool is not None:
                source.spool.note_shipped(records, nbytes)
            else:
                source.records_left = max(source.records_left - records, 0)
                source.bytes_left = max(source.bytes_left - nbytes, 0)
            self._progress.notify_all()

    def _finish(self, source: _Source) -> None:
        """An adopted directory was shipped whole: remove it."""
        if source._reader is not None:
            self._skipped_done += source._reader.skipped_bytes
        source.close_reader()
        source.directory.remove()
        with self._progress:
            with contextlib.suppress(ValueError):
                self._adopted.remove(source)
            with contextlib.suppress(ValueError):
                self._uncounted.remove(source)
            self._progress.notify_all()
        log.info("spool shipper: adopted spool %s shipped and removed", source.directory.path)

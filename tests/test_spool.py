"""The spool library: framing, group fsync, quota, shipping, dead letters, adoption."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rybbit.spool import (
    SHIPPED,
    Outcome,
    Refused,
    Retry,
    Shipper,
    Spool,
    SpoolBroken,
    SpoolFull,
    iter_records,
)
from rybbit.spool import durable as durable_module
from rybbit.spool import writer as writer_module
from rybbit.spool.segments import FRAME_SIZE, HEADER_SIZE, encode, encode_header


def record(n: int, size: int = 100) -> bytes:
    body = json.dumps({"id": f"r{n}", "pad": ""}).encode()
    return json.dumps({"id": f"r{n}", "pad": "x" * max(size - len(body), 0)}).encode()


def write_segment(path: Path, payloads: Sequence[bytes]) -> list[int]:
    """A segment file holding ``payloads``; returns each record's offset."""
    offsets, position = [], HEADER_SIZE
    for payload in payloads:
        offsets.append(position)
        position += FRAME_SIZE + len(payload)
    path.write_bytes(encode_header() + encode(payloads))
    return offsets


class Sink:
    """A deliver function recording what it got; ``failing`` makes it fail transiently, and
    ``refuse`` names a marker whose records it refuses; ``seen`` makes it idempotent."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.call_times: list[float] = []
        self.stored: list[bytes] = []
        self.seen: set[bytes] = set()
        self.failing = False
        self.refuse: bytes | None = None
        self.lock = threading.Lock()

    def __call__(self, payloads: list[bytes]) -> list[Outcome]:
        with self.lock:
            self.calls.append(list(payloads))
            self.call_times.append(time.monotonic())
            if self.failing:
                raise ConnectionError("store down")
            outcomes: list[Outcome] = []
            for payload in payloads:
                if self.refuse is not None and self.refuse in payload:
                    outcomes.append(Refused("cannot store nested arrays"))
                    continue
                if payload not in self.seen:  # a duplicate key counts as shipped
                    self.seen.add(payload)
                    self.stored.append(payload)
                outcomes.append(SHIPPED)
            return outcomes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def shippers() -> Iterator[list[Shipper]]:
    """Shippers started by a test, stopped after it whatever happened."""
    started: list[Shipper] = []
    yield started
    for shipper in started:
        shipper.stop(1)


def start(shippers: list[Shipper], *args: object, **kwargs: object) -> Shipper:
    shipper = Shipper(*args, **kwargs)  # type: ignore[arg-type]
    shipper.start()
    shippers.append(shipper)
    return shipper


# Framing ---------------------------------------------------------------------------------


def test_framing_round_trip(tmp_path: Path) -> None:
    payloads = [record(n, size=n * 37 + 1) for n in range(50)] + [b"\x00\xff" * 3]
    offsets = write_segment(tmp_path / "000000000001.seg", payloads)
    assert list(iter_records(tmp_path / "000000000001.seg")) == list(
        zip(offsets, payloads, strict=True)
    )


def test_empty_records_are_refused() -> None:
    # Zero-filled space must never read as records: crc32(b"") is 0.
    with pytest.raises(ValueError):
        encode([b"ok", b""])


@pytest.mark.parametrize("tail", ["cut", "zeros", "garbage"])
def test_torn_tail_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: str
) -> None:
    path = tmp_path / "000000000001.seg"
    payloads = [record(n) for n in range(10)]
    write_segment(path, payloads)
    data = path.read_bytes()
    if tail == "cut":  # the last record's write was cut short by a crash
        data = data[:-40]
        expected = payloads[:9]
    elif tail == "zeros":  # the file system extended the file but the data never landed
        data = data + b"\x00" * 300
        expected = payloads
    else:
        data = data + b"\x07\x00\x00\x00garbage!"
        expected = payloads
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="rybbit.spool"):
        got = [payload for _, payload in iter_records(path)]
    assert got == expected
    assert any("torn tail" in message for message in caplog.messages)


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
def test_corrupt_middle_record_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    path = tmp_path / "000000000001.seg"
    payloads = [record(n) for n in range(10)]
    offsets = write_segment(path, payloads)
    data = bytearray(path.read_bytes())
    at = {"length": 1, "checksum": 5, "payload": FRAME_SIZE + 20}[where] + offsets[4]
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="rybbit.spool"):
        got = [payload for _, payload in iter_records(path)]
    assert got == payloads[:4] + payloads[5:]
    assert any("corrupt record" in message for message in caplog.messages)


# The writer ------------------------------------------------------------------------------


def test_records_are_in_the_segment_after_append(root: Path) -> None:
    spool = Spool(root, quota_bytes=1 << 20)
    spool.append([record(1), record(2)])
    spool.append([record(3)])
    segments = sorted(spool.path.glob("*.seg"))
    assert [p for _, p in iter_records(segments[0])] == [record(1), record(2), record(3)]
    assert spool.durable_position() == (1, os.path.getsize(segments[0]))
    spool.close()
    assert spool.path.exists()  # nothing was shipped: left for an adopter


def test_segments_roll_at_segment_bytes(root: Path) -> None:
    spool = Spool(root, quota_bytes=1 << 20, segment_bytes=1000)
    payloads = [record(n, size=300) for n in range(10)]
    for payload in payloads:
        spool.append([payload])
    segments = sorted(spool.path.glob("*.seg"))
    assert len(segments) >= 4
    assert all(path.stat().st_size <= 1000 for path in segments)
    assert [p for path in segments for _, p in iter_records(path)] == payloads
    spool.close()


def test_concurrent_appends_share_fsyncs_and_return_only_once_on_disk(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many threads append at once: few fdatasyncs serve them all, and no append returns
    before an fdatasync that covers its record (checked against what each sync covered)."""
    synced_upto: dict[int, int] = {}
    sync_calls: list[int] = []
    real = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        size = os.fstat(fd).st_size  # what this sync is sure to cover
        time.sleep(0.002)  # a slow disk, so that appends pile up behind each sync
        real(fd)
        sync_calls.append(fd)
        synced_upto[os.fstat(fd).st_ino] = max(synced_upto.get(os.fstat(fd).st_ino, 0), size)

    monkeypatch.setattr(durable_module.os, "fdatasync", counting_fdatasync)
    spool = Spool(root, quota_bytes=1 << 30, segment_bytes=1 << 30)
    threads, per_thread = 32, 20
    failures: list[str] = []
    segment = spool.directory.segment_path(1)
    inode = segment.stat().st_ino

    def writer(name: int) -> None:
        for n in range(per_thread):
            payload = json.dumps({"id": f"{name}-{n}"}).encode()
            spool.append([payload])
            covered = segment.read_bytes()[: synced_upto.get(inode, 0)]
            if payload not in covered:
                failures.append(f"{name}-{n} acknowledged before its fdatasync")

    workers = [threading.Thread(target=writer, args=(name,)) for name in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    appends = threads * per_thread
    assert len(list(iter_records(segment))) == appends
    # Sharing happened: far fewer syncs than appends (one each without grouping).
    assert spool.fsyncs <= appends // 4, (spool.fsyncs, appends)
    assert len(sync_calls) <= appends // 4 + 2
    spool.close()


def test_quota_refuses_then_accepts_after_shipping(root: Path, shippers: list[Shipper]) -> None:
    payload = record(0, size=500)
    frame = FRAME_SIZE + len(payload)
    spool = Spool(root, quota_bytes=10 * frame)
    for _ in range(10):
        spool.append([payload])
    size_before = spool.directory.segment_path(1).stat().st_size
    with pytest.raises(SpoolFull):
        spool.append([payload])
    assert spool.directory.segment_path(1).stat().st_size == size_before  # nothing written
    sink = Sink()
    shipper = start(shippers, root, spool, sink)
    assert shipper.flush(10)
    spool.append([payload])  # room again
    assert shipper.flush(10)
    assert sum(len(call) for call in sink.calls) == 11


def test_a_failed_fsync_breaks_the_spool_for_good(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(root, quota_bytes=1 << 20)
    spool.append([record(1)])

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable_module.os, "fdatasync", failing)
    with pytest.raises(SpoolBroken):
        spool.append([record(2)])
    monkeypatch.undo()  # the disk seems fine again: the dropped pages may be gone all the same
    with pytest.raises(SpoolBroken):
        spool.append([record(3)])
    spool.close()


def test_a_full_disk_mid_write_leaves_no_torn_record(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(root, quota_bytes=1 << 20)
    spool.append([record(1)])
    segment = spool.directory.segment_path(1)
    size = segment.stat().st_size
    real_write = os.write
    calls = {"n": 0}

    def short_then_enospc(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:30])  # a partial write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module.os, "write", short_then_enospc)
    with pytest.raises(SpoolFull):
        spool.append([record(2, size=500)])
    monkeypatch.undo()
    assert segment.stat().st_size == size  # the partial frame was cut off again
    spool.append([record(3)])
    assert [payload for _, payload in iter_records(segment)] == [record(1), record(3)]
    spool.close()


# The shipper -----------------------------------------------------------------------------


def test_ships_everything_in_order_and_trims(root: Path, shippers: list[Shipper]) -> None:
    spool = Spool(root, quota_bytes=1 << 30, segment_bytes=4096)
    sink = Sink()
    shipper = start(shippers, root, spool, sink, batch_size=7)
    payloads = [record(n) for n in range(300)]
    for payload in payloads:
        spool.append([payload])
    assert shipper.flush(10)
    assert sink.stored == payloads
    assert max(len(call) for call in sink.calls) <= 7
    stats = shipper.stats()
    assert (stats.backlog_events, stats.backlog_bytes, stats.shipped_total) == (0, 0, 300)
    # Wholly shipped segments are gone; only the live one stays.
    assert [path.name for path in spool.path.glob("*.seg")] == [
        spool.directory.segment_path(spool.durable_position()[0]).name
    ]
    assert shipper.stop(5)
    spool.close()
    assert not spool.path.exists()  # all shipped: the directory goes with the spool


def test_transient_failures_back_off_and_resume(root: Path, shippers: list[Shipper]) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    sink = Sink()
    sink.failing = True
    shipper = start(shippers, root, spool, sink, backoff_initial=0.02, backoff_max=0.16)
    payloads = [record(n) for n in range(20)]
    spool.append(payloads)
    time.sleep(0.8)
    stats = shipper.stats()
    assert stats.ship_errors_total >= 3
    assert "store down" in (stats.last_error or "")
    assert stats.backlog_events == 20 and stats.oldest_age_seconds > 0.5
    gaps = [b - a for a, b in zip(sink.call_times, sink.call_times[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.5  # exponential
    assert max(gaps) < 0.16 * 2  # capped
    assert all(call == payloads for call in sink.calls)  # the same records, retried
    sink.failing = False
    assert shipper.flush(5)
    assert sink.stored == payloads
    assert shipper.stats().backlog_events == 0


def test_a_retry_mid_batch_keeps_order_and_redelivers_from_there(
    root: Path, shippers: list[Shipper]
) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    payloads = [record(n) for n in range(10)]
    spool.append(payloads)
    seen: set[bytes] = set()
    calls: list[list[bytes]] = []

    def deliver(batch: list[bytes]) -> list[Outcome]:
        calls.append(batch)
        outcomes: list[Outcome] = []
        for payload in batch:
            if payload == payloads[4] and len(calls) == 1:
                outcomes.append(Retry("write conflict"))
            else:
                seen.add(payload)
                outcomes.append(SHIPPED)
        return outcomes

    shipper = start(shippers, root, spool, deliver, backoff_initial=0.01)
    assert shipper.flush(5)
    assert calls[0] == payloads and calls[1] == payloads[4:]
    assert seen == set(payloads)


def test_poison_records_are_dead_lettered_and_the_rest_ship(
    root: Path, shippers: list[Shipper]
) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    sink = Sink()
    sink.refuse = b"POISON"
    shipper = start(shippers, root, spool, sink)
    payloads = [record(n) for n in range(10)]
    poison = [json.dumps({"id": "p1", "x": "POISON"}).encode(), b"not json POISON"]
    spool.append(payloads[:3] + [poison[0]] + payloads[3:7] + [poison[1]] + payloads[7:])
    assert shipper.flush(5)
    assert sink.stored == payloads
    lines = [json.loads(line) for line in (root / "dead-letter.jsonl").read_text().splitlines()]
    assert [line["reason"] for line in lines] == ["cannot store nested arrays"] * 2
    assert lines[0]["record"] == {"id": "p1", "x": "POISON"}
    assert lines[1]["record_base64"] == "bm90IGpzb24gUE9JU09O"
    stats = shipper.stats()
    assert (stats.shipped_total, stats.refused_total) == (10, 2)


def test_stats_report_the_backlog_while_the_store_is_down(
    root: Path, shippers: list[Shipper]
) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    sink = Sink()
    sink.failing = True
    shipper = start(shippers, root, spool, sink, backoff_initial=0.05)
    payloads = [record(n, size=200) for n in range(5)]
    spool.append(payloads)
    time.sleep(0.3)
    stats = shipper.stats()
    assert stats.backlog_events == 5
    assert stats.backlog_bytes == 5 * (FRAME_SIZE + 200)
    assert 0.2 < stats.oldest_age_seconds < 5
    assert stats.shipped_total == 0


def test_on_progress_sees_each_attempt_counted_failures_and_shipments_alike(
    root: Path, shippers: list[Shipper]
) -> None:
    """What metrics are fed: after every attempt, stats() already includes it (a report made
    before the counters move would leave the last shipment out until the next one)."""
    spool = Spool(root, quota_bytes=1 << 30)
    sink = Sink()
    sink.failing = True
    seen: list[tuple[int, int, int]] = []
    shipper: Shipper | None = None

    def on_progress() -> None:
        assert shipper is not None
        stats = shipper.stats()
        seen.append((stats.shipped_total, stats.ship_errors_total, stats.backlog_events))

    shipper = start(shippers, root, spool, sink, backoff_initial=0.02, on_progress=on_progress)
    spool.append([record(n) for n in range(7)])
    deadline = time.monotonic() + 5
    while not any(errors >= 2 for _, errors, _ in seen):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert seen[-1][0] == 0 and seen[-1][2] == 7
    sink.failing = False
    assert shipper.flush(5)
    deadline = time.monotonic() + 5
    while seen[-1][0] != 7:  # reported without any further shipment
        assert time.monotonic() < deadline, seen[-3:]
        time.sleep(0.01)
    assert seen[-1][2] == 0
    assert seen[-1][1] == len(sink.calls) - 1  # every failed delivery, counted once


# Ownership and adoption (same process; real crashes are in test_spool_crash.py) -----------


def test_a_closed_spool_with_a_backlog_is_adopted_from_its_checkpoint(
    root: Path, shippers: list[Shipper]
) -> None:
    spool = Spool(root, quota_bytes=1 << 30, segment_bytes=2048)
    first = Sink()
    shipper = start(shippers, root, spool, first)
    payloads = [record(n) for n in range(60)]
    for payload in payloads[:30]:
        spool.append([payload])
    assert shipper.flush(5)
    shipper.stop(1)
    for payload in payloads[30:]:
        spool.append([payload])
    spool.close()  # 30 unshipped: the directory stays, unlocked
    assert spool.path.exists()
    second = Sink()
    adopter = start(shippers, root, None, second)
    assert adopter.flush(5)
    assert second.stored == payloads[30:]  # from the checkpoint on, none twice
    assert not spool.path.exists()


def test_a_live_spool_is_not_adopted_by_another_shipper(
    root: Path, shippers: list[Shipper]
) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    spool.append([record(1)])
    sink = Sink()
    other = start(shippers, root, None, sink)  # as another worker would
    assert other.flush(1)
    assert other.stats().adopted_spools == 0 and sink.calls == []
    assert spool.path.exists()
    spool.close()


def test_a_corrupt_tail_in_an_adopted_spool_is_skipped_and_the_rest_shipped(
    root: Path, shippers: list[Shipper], caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    payloads = [record(n) for n in range(20)]
    spool.append(payloads)
    segment = spool.directory.segment_path(1)
    spool.close()
    with segment.open("ab") as handle:  # a record torn by a crash mid-write
        handle.write(encode([record(99)])[:50])
    sink = Sink()
    with caplog.at_level(logging.WARNING, logger="rybbit.spool"):
        adopter = start(shippers, root, None, sink)
        assert adopter.flush(5)
    assert sink.stored == payloads
    assert any("torn tail" in message for message in caplog.messages)
    assert adopter.stats().skipped_bytes_total == 50


def test_under_steady_load_each_shipment_lingers_to_fill_up(
    root: Path, shippers: list[Shipper]
) -> None:
    """Records arriving steadily (one every 10 ms) go in a few shipments, not one each: after
    each shipment the shipper lets the next fill up for ``linger`` again."""
    spool = Spool(root, quota_bytes=1 << 30)
    sink = Sink()

    def slow_store(payloads: list[bytes]) -> list[Outcome]:
        time.sleep(0.03)  # records keep arriving while a shipment is on its way
        return sink(payloads)

    start(shippers, root, spool, slow_store, linger=0.25, idle_poll=0.01)
    for n in range(60):
        spool.append([record(n)])
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while len(sink.stored) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.stored == [record(n) for n in range(60)]
    assert len(sink.calls) <= 6, [len(call) for call in sink.calls]


def test_a_trickle_is_shipped_in_one_delivery_but_flush_does_not_linger(
    root: Path, shippers: list[Shipper]
) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    sink = Sink()
    shipper = start(shippers, root, spool, sink, linger=0.5)
    for n in range(5):
        spool.append([record(n)])
        time.sleep(0.02)
    time.sleep(0.1)
    assert sink.calls[:1] in ([], [[record(0)]])  # the first may go at once; the rest wait
    began = time.monotonic()
    assert shipper.flush(5)
    assert time.monotonic() - began < 0.4  # no lingering while someone waits
    assert sink.stored == [record(n) for n in range(5)]
    assert len(sink.calls) <= 2

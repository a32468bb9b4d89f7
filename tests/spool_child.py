"""A process that writes to a spool, for the crash tests (tests/test_spool_crash.py).

    python tests/spool_child.py ROOT append SINK   append records from 4 threads, with a
                                                    shipper into the SQLite SINK, printing
                                                    "ack <id>" after each append returned
    python tests/spool_child.py ROOT hold N        append N records without shipping, print
                                                    "ready", then sleep until killed
    python tests/spool_child.py ROOT gevent        the core scenario under gevent monkey-patching

Each mode runs until killed (or, for gevent, prints one JSON line of results and exits).
"""

from __future__ import annotations

import sys

if len(sys.argv) > 2 and sys.argv[2] == "gevent":
    from gevent import monkey

    monkey.patch_all()

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rybbit.spool import Shipper, Spool  # noqa: E402


def sqlite_sink(path: str):
    """An idempotent sink: a table keyed by record id; every attempt is counted too."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("CREATE TABLE IF NOT EXISTS stored (id TEXT PRIMARY KEY, body BLOB)")
    db.execute("CREATE TABLE IF NOT EXISTS attempts (id TEXT)")

    def deliver(payloads: list[bytes]) -> None:
        ids = [(json.loads(p)["id"], p) for p in payloads]
        db.execute("BEGIN")
        db.executemany("INSERT INTO attempts (id) VALUES (?)", [(i,) for i, _ in ids])
        db.executemany("INSERT OR IGNORE INTO stored (id, body) VALUES (?, ?)", ids)
        db.execute("COMMIT")

    return deliver


def append_forever(root: str, sink: str) -> None:
    spool = Spool(root, quota_bytes=1 << 30, segment_bytes=32 * 1024)
    shipper = Shipper(root, spool, sqlite_sink(sink), batch_size=50)
    shipper.start()
    out_lock = threading.Lock()

    def writer(name: int) -> None:
        n = 0
        while True:
            ident = f"{name}-{n}"
            spool.append([json.dumps({"id": ident, "pad": "x" * 300}).encode()])
            with out_lock:
                sys.stdout.write(f"ack {ident}\n")
                sys.stdout.flush()
            n += 1

    for name in range(4):
        threading.Thread(target=writer, args=(name,), daemon=True).start()
    while True:
        time.sleep(1)


def hold(root: str, count: int) -> None:
    spool = Spool(root, quota_bytes=1 << 30)
    for n in range(count):
        spool.append([json.dumps({"id": f"held-{n}"}).encode()])
    print("ready", spool.path.name, flush=True)
    while True:
        time.sleep(1)


def gevent_scenario(root: str) -> None:
    """Greenlets append concurrently; the fdatasync must run off the hub (others keep going)."""
    import gevent
    from gevent import monkey

    real_sleep = monkey.get_original("time", "sleep")
    native_ident = monkey.get_original("threading", "get_ident")
    main_ident = native_ident()
    sync_threads: list[int] = []
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        sync_threads.append(native_ident())
        real_sleep(0.02)  # blocks its OS thread: the hub's if the spool ran it there
        real_fdatasync(fd)

    os.fdatasync = slow_fdatasync
    spool = Spool(root, quota_bytes=1 << 30, segment_bytes=64 * 1024)
    delivered: list[bytes] = []
    shipper = Shipper(root, spool, lambda payloads: delivered.extend(payloads))
    shipper.start()
    ticks = 0
    running = True

    def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            gevent.sleep(0.001)

    tick = gevent.spawn(ticker)
    appended: list[bytes] = []

    def writer(name: int) -> None:
        for n in range(40):
            record = json.dumps({"id": f"{name}-{n}"}).encode()
            spool.append([record])
            appended.append(record)

    started = time.monotonic()
    gevent.joinall([gevent.spawn(writer, name) for name in range(32)])
    elapsed = time.monotonic() - started
    flushed = shipper.flush(20)
    running = False
    tick.join()
    shipper.stop(5)
    spool.close()
    print(
        json.dumps(
            {
                "appended": len(appended),
                "fsyncs": spool.fsyncs,
                "flushed": flushed,
                "delivered_in_order_per_writer": _per_writer(delivered) == _per_writer(appended),
                "delivered": len(delivered),
                "distinct": len(set(delivered)),
                "ticks": ticks,
                "elapsed": elapsed,
                "syncs_on_main_thread": sum(ident == main_ident for ident in sync_threads),
                "syncs": len(sync_threads),
            }
        ),
        flush=True,
    )


def _per_writer(records: list[bytes]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for record in records:
        ident = json.loads(record)["id"]
        order.setdefault(ident.split("-")[0], []).append(ident)
    return order


if __name__ == "__main__":
    root, mode = sys.argv[1], sys.argv[2]
    if mode == "append":
        append_forever(root, sys.argv[3])
    elif mode == "hold":
        hold(root, int(sys.argv[3]))
    elif mode == "gevent":
        gevent_scenario(root)

"""The embedded store on its own (no HTTP): writes and exports per second.

    python -m bench.store [--events 100000] [--export-events 1000000] [--synchronous NORMAL]

Prints, for the SQLite store in a fresh temporary folder:
  - events/s written in batches of 500 (one insert_events, one transaction, each), overall
    and over the last fifth (does it slow down as the table grows?);
  - single-event commits/s from one thread (one transaction per event);
  - events/s through group commit from 16 threads each committing one event at a time;
  - NDJSON export of --export-events stored events (iter_events + event_to_json, as
    `GET /api/admin/sites/<id>/events` with Accept: application/x-ndjson does), events/s;
  - a page of 100 events at the start and at the end of that site (keyset cursor), ms.
Events are shaped as the service stores them: the workload's fields plus the enrichers'.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import events as make_events  # noqa: E402
from rybbit.events import encode_cursor, event_to_json, query_events  # noqa: E402
from rybbit.storage import EventQuery, SQLiteStorage  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)


def stored_shape(count: int, site_id: str = "1", seed: int = 7) -> list[dict[str, Any]]:
    """Documents as the service stores them after enrichment."""
    docs = []
    for n, event in enumerate(make_events(count, site_id, seed=seed)):
        stamp = START + timedelta(milliseconds=n * 7)
        event.pop("ip_address", None)
        event.update(
            timestamp=stamp,
            received_at=stamp,
            api_key_id="key_0123456789abcdef",
            browser="Chrome",
            browser_version="120.0",
            operating_system="Windows",
            operating_system_version="10",
            device_type="Desktop",
            country="GB",
            region="ENG",
            city="London",
            lat=51.5,
            lon=-0.12,
            timezone="Europe/London",
            channel="Organic Search",
            user_id=f"{n % 5000:032x}",
            anonymous=True,
            session_id=f"{n % 3000:032x}",
            is_bot=False,
        )
        docs.append(event)
    return docs


def fresh(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(doc) for doc in docs]  # insert_events sets _id in the documents


def rate(count: int, seconds: float, cpu: float | None = None) -> str:
    text = f"{count / seconds:>10,.0f}/s  ({1e6 * seconds / count:.1f} us each"
    if cpu is not None:  # this process's CPU, all threads (the checkpoint thread's too)
        text += f", {1e6 * cpu / count:.1f} us CPU"
    return text + ")"


def bench_batches(store: SQLiteStorage, docs: list[dict[str, Any]]) -> None:
    size = 500
    marks = []
    batches = [fresh(docs[start : start + size]) for start in range(0, len(docs), size)]
    cpu = time.process_time()
    started = time.perf_counter()
    for batch in batches:
        store.insert_events(batch)
        marks.append(time.perf_counter())
    took = marks[-1] - started
    cpu = time.process_time() - cpu
    fifth = max(1, len(marks) // 5)
    last = marks[-1] - (marks[-fifth - 1] if len(marks) > fifth else started)
    print(f"batches of {size:<4}  {len(docs):>9,} events  {rate(len(docs), took, cpu)}", flush=True)
    print(
        f"  last fifth (table at {len(docs) * 4 // 5:,}+)  {rate(fifth * size, last)}", flush=True
    )


def bench_singles(store: SQLiteStorage, docs: list[dict[str, Any]]) -> None:
    docs = fresh(docs)
    cpu = time.process_time()
    started = time.perf_counter()
    for doc in docs:
        store.insert_events([doc])
    took = time.perf_counter() - started
    cpu = time.process_time() - cpu
    print(f"single-event commits, one thread  {rate(len(docs), took, cpu)}", flush=True)


def bench_group_commit(store: SQLiteStorage, docs: list[dict[str, Any]], threads: int) -> None:
    parts = [fresh(docs[n::threads]) for n in range(threads)]
    calls_before = store.group_commit.calls

    def run(part: list[dict[str, Any]]) -> None:
        for doc in part:
            store.commit_events([doc])

    workers = [threading.Thread(target=run, args=(part,)) for part in parts]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    took = time.perf_counter() - started
    calls = store.group_commit.calls - calls_before
    print(
        f"group commit, {threads} threads, 1 event each  {rate(len(docs), took)}"
        f"  ({len(docs) / max(1, calls):.1f} events a transaction)",
        flush=True,
    )


def bench_export(store: SQLiteStorage, total: int, docs: list[dict[str, Any]]) -> None:
    have = store.count_events("2")
    started = time.perf_counter()
    while have < total:
        chunk = fresh(docs[: min(len(docs), total - have)])
        for n, doc in enumerate(chunk):
            doc["site_id"] = "2"
            doc["timestamp"] = START + timedelta(milliseconds=3 * (have + n))
        for start in range(0, len(chunk), 500):
            store.insert_events(chunk[start : start + 500])
        have += len(chunk)
    print(f"  (filled site 2 to {total:,} events in {time.perf_counter() - started:.0f} s)")
    query = EventQuery(site_id="2", newest_first=False)
    ways = {
        "export_lines (as the API and CLI export)": store.iter_event_lines(query, event_to_json),
        "iter_events + event_to_json": (event_to_json(e) for e in store.iter_events(query)),
    }
    for label, lines in ways.items():
        cpu = time.process_time()
        started = time.perf_counter()
        size = count = 0
        for line in lines:
            size += len(line) + 1
            count += 1
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        print(
            f"NDJSON export of {count:,} events, {label}  {rate(count, took, cpu)}  "
            f"{size / 1e6:.0f} MB",
            flush=True,
        )
    for label, newest_first in (("oldest", False), ("newest", True)):
        first = query_events(store, "2", limit=100, newest_first=newest_first)
        started = time.perf_counter()
        for _ in range(20):
            query_events(
                store, "2", limit=100, newest_first=newest_first, after=encode_cursor(first[-1])
            )
        took = (time.perf_counter() - started) / 20
        print(f"  a page of 100 after the {label} 100: {1000 * took:.2f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="for the batch run")
    parser.add_argument("--singles", type=int, default=20_000, help="for the single-commit runs")
    parser.add_argument("--export-events", type=int, default=1_000_000, help="0 skips the export")
    parser.add_argument("--synchronous", default="NORMAL", help="NORMAL or FULL")
    parser.add_argument("--dir", help="folder for the database (default: a temporary one)")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="rybbit-store-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"SQLite store in {folder} (synchronous={args.synchronous}); load average before: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    store = SQLiteStorage(str(folder / "rybbit.sqlite3"), synchronous=args.synchronous)
    store.ensure_indexes()
    docs = stored_shape(max(args.events, args.singles))
    bench_batches(store, docs[: args.events])
    bench_singles(store, stored_shape(args.singles, seed=8))
    bench_group_commit(store, stored_shape(args.singles, seed=9), threads=16)
    if args.export_events:
        bench_export(store, args.export_events, docs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    store.close()
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

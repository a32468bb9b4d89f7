"""The spool on its own (no HTTP): durable appends and shipping, per second and per record.

    python -m bench.spool [--seconds 2] [--threads 1,8,32] [--size 600] [--ship 100000]
    python -m bench.spool --gevent      # the same with gevent monkey-patching (greenlets)

Prints, for a spool in a fresh temporary folder (on the file system of --dir, default the
system's temp folder; put it where the service's instance folder lives):
  - one fdatasync after a --size append, from one thread: median and p99, ms;
  - for each thread count: records/s acknowledged (each thread appends one --size record at
    a time and waits for it to be durable, as a request does), fdatasyncs/s, records per
    fdatasync, and µs of process CPU per record (all threads, sync waits excluded);
  - the same with --batch records per append (a batch request), from 1 and 8 threads;
  - shipping: --ship records read back, batched (1000) and handed to a deliver that does
    nothing: records/s and µs of CPU per record (the shipper's own cost, store excluded).
"""

from __future__ import annotations

import sys

if "--gevent" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rybbit.spool import Shipper, Spool  # noqa: E402


def payload(size: int, n: int) -> bytes:
    body = json.dumps({"_id": f"{n:024x}", "site_id": "1", "pathname": "/p"}).encode()
    return body[:-1] + b',"pad":"' + b"x" * max(size - len(body) - 9, 0) + b'"}'


def raw_fsync(directory: Path, size: int, count: int = 200) -> tuple[float, float]:
    path = directory / "raw-fsync"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = payload(size, 0)
    times = []
    try:
        for _ in range(count):
            os.write(fd, data)
            start = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


def appends(
    directory: Path, threads: int, seconds: float, size: int, batch: int = 1
) -> dict[str, float]:
    spool = Spool(directory, quota_bytes=1 << 40, segment_bytes=64 << 20)
    records = [[payload(size, n * batch + k) for k in range(batch)] for n in range(threads)]
    counts = [0] * threads
    stop = threading.Event()

    def writer(index: int) -> None:
        chunk = records[index]
        done = 0
        while not stop.is_set():
            spool.append(chunk)
            done += len(chunk)
        counts[index] = done

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    cpu0, wall0, syncs0 = time.process_time(), time.perf_counter(), spool.fsyncs
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    cpu, wall, syncs = (
        time.process_time() - cpu0,
        time.perf_counter() - wall0,
        spool.fsyncs - syncs0,
    )
    total = sum(counts)
    spool.note_shipped(total, spool.backlog()[1])  # nothing ships here: let it go
    spool.close()
    return {
        "records_per_s": total / wall,
        "fsyncs_per_s": syncs / wall,
        "records_per_fsync": total / max(syncs, 1),
        "cpu_us_per_record": cpu / max(total, 1) * 1e6,
    }


def shipping(directory: Path, count: int, size: int) -> dict[str, float]:
    spool = Spool(directory, quota_bytes=1 << 40, segment_bytes=64 << 20)
    batch = [payload(size, n) for n in range(1000)]
    for _ in range(count // 1000):
        spool.append(batch)
    delivered = 0

    def deliver(payloads: list[bytes]) -> None:
        nonlocal delivered
        delivered += len(payloads)

    shipper = Shipper(directory, spool, deliver, batch_size=1000)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    shipper.start()
    assert shipper.flush(600), "shipping did not finish"
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    shipper.stop(5)
    spool.close()
    return {
        "records_per_s": delivered / wall,
        "cpu_us_per_record": cpu / max(delivered, 1) * 1e6,
        "batches": shipper.delivered_batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument(
        "--batch", type=int, default=100, help="records per append in the batch figure"
    )
    parser.add_argument("--ship", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where the temporary spool goes")
    parser.add_argument("--gevent", action="store_true", help="monkey-patch with gevent first")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rybbit-bench-spool-", dir=args.dir))
    try:
        mode = "gevent greenlets" if args.gevent else "threads"
        print(f"spool bench in {base} ({mode}, {args.size}-byte records)")
        median, p99 = raw_fsync(base, args.size)
        print(f"one fdatasync: median {median:.3f} ms, p99 {p99:.3f} ms")
        for threads in (int(n) for n in args.threads.split(",")):
            got = appends(base / f"append-{threads}", threads, args.seconds, args.size)
            print(
                f"append, {threads:>2} {mode}: {got['records_per_s']:>9,.0f} records/s, "
                f"{got['fsyncs_per_s']:>6,.0f} fdatasyncs/s, "
                f"{got['records_per_fsync']:>5.1f} records/fdatasync, "
                f"{got['cpu_us_per_record']:>6.1f} us CPU/record"
            )
        for threads in (1, 8):
            got = appends(
                base / f"batch-{threads}", threads, args.seconds, args.size, batch=args.batch
            )
            print(
                f"append {args.batch} at a time, {threads:>2} {mode}: "
                f"{got['records_per_s']:>9,.0f} records/s, "
                f"{got['fsyncs_per_s']:>6,.0f} fdatasyncs/s, "
                f"{got['cpu_us_per_record']:>6.1f} us CPU/record"
            )
        got = shipping(base / "ship", args.ship, args.size)
        print(
            f"ship into a no-op deliver: {got['records_per_s']:>9,.0f} records/s, "
            f"{got['cpu_us_per_record']:.1f} us CPU/record ({got['batches']:.0f} batches)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

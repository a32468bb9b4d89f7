"""An NDJSON export of a big site beside /api/track traffic, on the embedded store.

    python -m bench.export_load [--events 1000000] [--rate 0] [--seconds 15] [--geoip PATH]

Serves the app with gunicorn (gunicorn.conf.py's defaults: 2 gthread workers) on a fresh
instance folder, fills one site with --events stored events (written straight into the SQLite
file beside the running service, as another process would), then:
  1. /api/track at saturation for a few seconds (wrk), to pick the paced rate: half of it unless
     --rate is given;
  2. /api/track paced at that rate for --seconds: p50/p99 without an export;
  3. the same paced load while `GET /api/admin/sites/<id>/events` (Accept:
     application/x-ndjson) streams the whole site: p50/p99 beside the export, and the export's
     events/s. The ratio of the two p99s is the figure the target is about (<= 2).
Rate limiting is off (no Redis needed): the figure is about the store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers  # noqa: E402
from bench.store import stored_shape  # noqa: E402
from bench.throughput import ADMIN_TOKEN, credentials, event_bodies, show, wrk  # noqa: E402
from rybbit.storage import SQLiteStorage  # noqa: E402


def fill(path: Path, site_id: str, total: int) -> None:
    store = SQLiteStorage(str(path), busy_timeout_ms=30_000)
    docs = stored_shape(50_000, site_id)
    started = time.perf_counter()
    done = 0
    while done < total:
        chunk = [dict(doc) for doc in docs[: min(len(docs), total - done)]]
        for start in range(0, len(chunk), 500):
            store.insert_events(chunk[start : start + 500])
        done += len(chunk)
    store.close()
    took = time.perf_counter() - started
    print(f"filled site {site_id} with {total:,} events in {took:.0f} s", flush=True)


def export(base: str, site_id: str, result: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/x-ndjson"}
    started = time.perf_counter()
    lines = size = 0
    with requests.get(
        f"{base}/api/admin/sites/{site_id}/events?order=asc",
        headers=headers,
        stream=True,
        timeout=600,
    ) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=1 << 20):
            lines += chunk.count(b"\n")
            size += len(chunk)
    result.update(events=lines, bytes=size, seconds=time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=0, help="paced req/s (0: half saturation)")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--geoip", help="GeoLite2/GeoIP2 City database")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rybbit-export-bench-"))
    env = {
        "RYBBIT_INSTANCE_PATH": str(work / "instance"),
        "RYBBIT_ADMIN_TOKEN": ADMIN_TOKEN,
        "RYBBIT_RATE_LIMIT": "off",
    }
    if args.geoip:
        env["RYBBIT_GEOIP_DATABASE"] = str(Path(args.geoip).resolve())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with servers.gunicorn("wsgi:app", env, work / "service.log") as service:
        site_id, api_keys = credentials(service.base_url, 20)
        fill(work / "instance" / "data" / "rybbit.sqlite3", site_id, args.events)
        singles = [json.dumps(b) for b in event_bodies(site_id, api_keys, 5000, seed=2)]
        saturation = wrk(service.base_url, "/api/track", singles, 5, args.connections)
        show("/api/track at saturation", saturation)
        rate = args.rate or saturation["rps"] / 2
        delay = max(1, int(args.connections * 1000 / rate))
        alone = wrk(service.base_url, "/api/track", singles, args.seconds, args.connections, delay)
        show(f"paced to ~{rate:.0f} req/s, no export", alone)
        result: dict[str, Any] = {}
        exporter = threading.Thread(target=export, args=(service.base_url, site_id, result))
        exporter.start()
        time.sleep(0.5)  # the export's query is under way
        beside = wrk(service.base_url, "/api/track", singles, args.seconds, args.connections, delay)
        show(f"paced to ~{rate:.0f} req/s, beside export", beside)
        exporter.join()
        print(
            f"export: {result['events']:,} events, {result['bytes'] / 1e6:.0f} MB in "
            f"{result['seconds']:.1f} s = {result['events'] / result['seconds']:,.0f} events/s",
            flush=True,
        )
        print(f"p99 beside export / alone: {beside['p99_ms'] / alone['p99_ms']:.2f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

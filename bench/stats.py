"""The stats query API on a big data set: how long the common queries take.

    python -m bench.stats [--events 1000000] [--sites 10] [--days 30] [--mongo-uri URI] [--keep DIR]

Generates ``--events`` events over the last ``--days`` days in ``--sites`` sites, shaped as the
service stores them (sessions of 1-6 events, a visitor's place and device on each of its events,
the referrer on a session's first), inserted through the storage interface in batches of
10,000 (not through HTTP), into the embedded store (a fresh folder) or, with ``--mongo-uri``,
a MongoDB database (dropped first). Then times, through the Flask test client (route, auth,
validation, JSON included), each query three times on one site and prints the best and the
worst:
  - the top 10 pages of the last 30 days (visitors, pageviews);
  - visitors per day over the last 30 days;
  - a country breakdown (visitors, visits, bounce rate) of the visits whose pages contain "/p/1";
  - every metric at once, no dimension (30 days).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rybbit.stats.query_schema import METRICS  # noqa: E402

TOKEN = "bench-stats-admin-token-0123456789abcdef"  # noqa: S105 (a throwaway app)
PAGES = [f"/p/{n}" for n in range(500)]
COUNTRIES = ["US", "DE", "GB", "FR", "IN", "BR", "JP", "CA", "NL", "SE"]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge"]
DEVICES = ["Desktop", "Mobile", "Tablet"]
REFERRERS = ["", "", "https://www.google.com/", "https://news.ycombinator.com/item?id=1"]
AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def generate(count: int, sites: int, days: int, now: datetime, seed: int = 1) -> Any:
    """Batches of stored-shape events, ``count`` in all."""
    rng = random.Random(seed)
    start = now - timedelta(days=days)
    visitors = max(count // 8, 1)
    batch: list[dict[str, Any]] = []
    made = session = 0
    while made < count:
        session += 1
        site = str(session % sites + 1)
        visitor = rng.randrange(visitors)
        country = COUNTRIES[visitor % len(COUNTRIES)]
        moment = start + timedelta(seconds=rng.random() * (days * 86400 - 2000))
        referrer = rng.choice(REFERRERS)
        popular = rng.random() < 0.7  # most visits see the few popular pages
        for index in range(rng.randint(1, 6)):
            moment += timedelta(seconds=rng.randint(5, 300))
            kind = "pageview" if rng.random() < 0.85 else "custom_event"
            event = {
                "site_id": site,
                "type": kind,
                "timestamp": moment,
                "received_at": moment,
                "pathname": rng.choice(PAGES[:10] if popular else PAGES),
                "hostname": "example.com",
                "referrer": referrer if index == 0 else "",
                "channel": "Organic Search" if "google" in referrer and index == 0 else "Direct",
                "country": country,
                "region": f"{country}-A",
                "city": f"City {visitor % 50}",
                "device_type": DEVICES[visitor % 3],
                "browser": BROWSERS[visitor % 4],
                "browser_version": "120",
                "operating_system": "Windows",
                "operating_system_version": "10",
                "user_agent": AGENT,
                "user_id": f"{site}-{visitor:030x}",
                "anonymous": True,
                "session_id": f"{session:032x}",
                "api_key_id": "key_0123456789abcdef",
            }
            if kind == "custom_event":
                event["event_name"] = "signup"
                event["properties"] = {"plan": rng.choice(["free", "pro"])}
            batch.append(event)
            made += 1
        if len(batch) >= 10_000:
            yield batch
            batch = []
    if batch:
        yield batch


QUERIES = {
    "top 10 pages, 30d": {
        "metrics": ["visitors", "pageviews"],
        "date_range": "30d",
        "dimensions": ["event:page"],
        "pagination": {"limit": 10},
    },
    "visitors per day, 30d": {
        "metrics": ["visitors"],
        "date_range": "30d",
        "dimensions": ["time:day"],
    },
    "countries, filtered, 30d": {
        "metrics": ["visitors", "visits", "bounce_rate"],
        "date_range": "30d",
        "dimensions": ["visit:country"],
        "filters": [["contains", "event:page", ["/p/1"]]],
    },
    "every metric, 30d": {
        "metrics": [metric for metric in METRICS if metric != "percentage"],
        "date_range": "30d",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--mongo-uri", default=None, help="a MongoDB database URI (dropped)")
    parser.add_argument("--keep", default=None, help="the instance folder to use and keep")
    args = parser.parse_args()

    folder = args.keep or tempfile.mkdtemp(prefix="bench-stats-")
    os.environ["RYBBIT_INSTANCE_PATH"] = folder
    from rybbit import create_app, delivery, sites
    from rybbit.storage import get_store

    if args.mongo_uri:
        import pymongo

        client: Any = pymongo.MongoClient(args.mongo_uri)
        client.drop_database(client.get_default_database().name)
        client.close()
    config = {
        "MONGO_URI": args.mongo_uri,
        "LOAD_PLUGINS": [],
        "ADMIN_TOKEN": TOKEN,
        "TESTING": True,
    }
    if args.mongo_uri:
        # FerretDB takes longer than the default 6 s socket timeout to send 100,000 events.
        config["MONGO_TIMEOUT_MS"] = 60_000
    app = create_app(config)
    try:
        with app.app_context():
            store = get_store()
            for number in range(args.sites):
                sites.create_site(store, name=f"Site {number + 1}", domain="example.com")
            now = datetime.now(UTC)
            started = time.perf_counter()
            site_events = 0
            for batch in generate(args.events, args.sites, args.days, now):
                store.insert_events(batch)
                site_events += sum(event["site_id"] == "1" for event in batch)
            seconds = time.perf_counter() - started
            store_name = "MongoDB at " + args.mongo_uri if args.mongo_uri else "embedded (SQLite)"
            print(f"store: {store_name}")
            print(
                f"inserted {args.events:,} events in {args.sites} sites over {args.days} days: "
                f"{seconds:.1f} s ({args.events / seconds:,.0f}/s)"
            )
        print(f"site 1 holds {site_events:,} events; each query is on site 1, run 3 times")
        http = app.test_client()
        for name, body in QUERIES.items():
            times = []
            for _ in range(3):
                began = time.perf_counter()
                response = http.post(
                    "/api/v2/query",
                    json={"site_id": "1", **body},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                times.append(time.perf_counter() - began)
                assert response.status_code == 200, response.get_json()
            rows = len(response.get_json()["results"])
            print(
                f"  {name:<26} best {min(times) * 1000:7.0f} ms   worst {max(times) * 1000:7.0f} ms"
                f"   median {statistics.median(times) * 1000:7.0f} ms   ({rows} rows)"
            )
    finally:
        delivery.close(app)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Shipping rate with session state in the store or in Redis, beside the raw insert rate.

    python -m bench.shipping [--geoip PATH] [--events 20000] [--batch 500] [--embedded]

In one process: ``--events`` realistic events (bench/workload.py), enriched once by the
request-stage chain as /api/track would, are shipped through ``Shipping.ship`` in batches of
``--batch`` (as the spool's shipper sends them) into a fresh database of a fresh FerretDB:
once with sessions in the store, once in Redis; and inserted as they are by pymongo's
``insert_many`` in the same batches (the server's raw rate, the ceiling). With ``--embedded``,
the store is the embedded SQLite one (and "raw" is its ``insert_events`` without enrichers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers  # noqa: E402
from bench.workload import events as make_events  # noqa: E402
from rybbit import create_app, delivery, keys, sites, track  # noqa: E402
from rybbit.plugin_loader import RUNNER_KEY  # noqa: E402
from rybbit.storage import get_store  # noqa: E402


def make_app(instance: Path, mongo_uri: str | None, sessions: str, geoip: str | None) -> Any:
    os.environ["RYBBIT_INSTANCE_PATH"] = str(instance)
    config = {
        "MONGO_URI": mongo_uri,
        "ACK": "store",  # no spool thread: the bench calls Shipping.ship itself
        "SESSIONS_STORAGE_URI": sessions,
        "LOAD_PLUGINS": [],
    }
    if geoip:
        config["GEOIP_DATABASE"] = str(Path(geoip).resolve())
    return create_app(config)


def enriched_events(app: Any, count: int) -> list[dict[str, Any]]:
    """Events as a spool holds them: built and enriched by the request stage, with an _id."""
    with app.app_context():
        store = get_store()
        site = sites.create_site(store, name="bench", domain="shop.example.com")
        key = keys.create_key(store, site["site_id"])
    out = []
    with app.test_request_context(environ_base={"REMOTE_ADDR": "127.0.0.1"}):
        for payload in make_events(count, site["site_id"]):
            found = track.start_event(store, payload, site, {"_id": key["id"]})
            assert not isinstance(found, str)
            event, context = found
            app.extensions[RUNNER_KEY].run(event, context)
            if track.finish_event(event, context) is None:
                event["_id"] = ObjectId()
                out.append(event)
    return out


def batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    fresh = copy.deepcopy(events)
    return [fresh[i : i + size] for i in range(0, len(fresh), size)]


def ship_rate(app: Any, events: list[dict[str, Any]], size: int) -> tuple[float, int]:
    """Events/s through Shipping.ship, and how many distinct sessions they got."""
    with app.app_context():
        sites.create_site(get_store(), name="bench", domain="shop.example.com")  # site "1"
    shipping = track._shipping(app)
    parts = batches(events, size)
    started = time.perf_counter()
    for part in parts:
        assert not any(shipping.ship(part)), "every event stored"
    seconds = time.perf_counter() - started
    delivery.close(app)
    return len(events) / seconds, len({e.get("session_id") for p in parts for e in p})


def raw_rate(mongo_uri: str, events: list[dict[str, Any]], size: int) -> float:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_uri)
    collection = client.get_default_database()["events"]
    parts = batches(events, size)
    started = time.perf_counter()
    for part in parts:
        collection.insert_many(part, ordered=False)
    seconds = time.perf_counter() - started
    client.close()
    return len(events) / seconds


def raw_embedded_rate(app: Any, events: list[dict[str, Any]], size: int) -> float:
    parts = batches(events, size)
    with app.app_context():
        store = get_store()
        started = time.perf_counter()
        for part in parts:
            store.insert_events(part)
        return len(events) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geoip", help="GeoLite2/GeoIP2 City database (full size)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--embedded", action="store_true", help="the embedded store")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rybbit-bench-shipping-"))
    with contextlib.ExitStack() as stack:
        base = None if args.embedded else stack.enter_context(servers.ferretdb(work / "ferretdb"))
        redis_uri = stack.enter_context(servers.redis())

        def uri(name: str) -> str | None:
            return f"{base}/{name}" if base else None

        def instance(name: str) -> Path:
            return work / name

        events = enriched_events(
            make_app(instance("prepare"), uri("prepare"), "store", args.geoip), args.events
        )
        visitors = len({e.get("user_id") for e in events if not e.get("is_bot")})
        print(
            f"{len(events)} events ({visitors} visitors), batches of {args.batch}, "
            f"store: {'embedded' if args.embedded else 'FerretDB ' + str(base)}",
            flush=True,
        )

        def raw_insert(name: str) -> float:
            if args.embedded:
                app = make_app(instance(name), None, "store", args.geoip)
                return raw_embedded_rate(app, events, args.batch)
            return raw_rate(str(uri(name)), events, args.batch)

        raw = raw_insert("raw")
        print(f"  raw insert:                {raw:8.0f} events/s", flush=True)
        runs = (
            ("store", "sessions in the store", "store"),
            ("redis", "sessions in Redis", redis_uri),
        )
        for name, label, sessions in runs:
            app = make_app(instance(name), uri(name), sessions, args.geoip)
            rate, count = ship_rate(app, events, args.batch)
            print(
                f"  shipped, {label:22s} {rate:8.0f} events/s  ratio {rate / raw:.2f}  "
                f"({count} sessions)",
                flush=True,
            )
        # Once more, last: how much the machine drifted during the runs (other load, caches).
        print(f"  raw insert, again:         {raw_insert('raw2'):8.0f} events/s", flush=True)


if __name__ == "__main__":
    main()

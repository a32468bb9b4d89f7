"""Shipping rate with session state in the store or in Redis, beside the raw insert rate.

    python -m bench.shipping [--geoip PATH] [--events 20000] [--batch 500] [--embedded]

In one process: ``--events`` realistic events (bench/workload.py), enriched once by the
request-stage chain as /api/track would, are shipped through ``Shipping.ship`` in batches of
``--batch`` (as the spool's shipper sends them) into a fresh database of a fresh FerretDB:
once with sessions in the store, once in Redis, once without sessions; and inserted as they are by pymongo's
``insert_many`` in the same batches (the server's raw rate, the ceiling). Each into its own
fresh database, batch by batch in turn, so that all three meet the same load from the rest of
a shared machine (run one after the other, they differed by up to 2x here). With ``--embedded``,
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
from collections.abc import Callable
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


def make_app(instance: Path, mongo_uri: str | None, sessions: str | None, geoip: str | None) -> Any:
    """An app on ``instance``; ``sessions``: where their state lives, None: no sessions."""
    os.environ["RYBBIT_INSTANCE_PATH"] = str(instance)
    config = {
        "MONGO_URI": mongo_uri,
        "ACK": "store",  # no spool thread: the bench calls Shipping.ship itself
        "SESSIONS_STORAGE_URI": sessions or "store",
        "PLUGINS_DISABLED": [] if sessions else ["sessions"],
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


def shipper(app: Any) -> Callable[[list[dict[str, Any]]], None]:
    """Shipping.ship of ``app`` (on a fresh store, its site "1" made)."""
    with app.app_context():
        sites.create_site(get_store(), name="bench", domain="shop.example.com")
    shipping = track._shipping(app)

    def ship(part: list[dict[str, Any]]) -> None:
        assert not any(shipping.ship(part)), "every event stored"

    return ship


def raw_inserter(app: Any, mongo_uri: str | None) -> Callable[[list[dict[str, Any]]], None]:
    """The ceiling: pymongo's insert_many into a plain collection; embedded, the store's own
    insert_events (no enrichers)."""
    if mongo_uri is None:
        with app.app_context():
            store = get_store()
        return lambda part: store.insert_events(part) and None
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_uri)
    collection = client.get_default_database()["events"]
    return lambda part: collection.insert_many(part, ordered=False) and None


def interleaved(
    runs: dict[str, Callable[[list[dict[str, Any]]], None]],
    events: list[dict[str, Any]],
    size: int,
) -> dict[str, float]:
    """Events/s of each run, over the same batches. Batch by batch, each run in turn (the
    order rotating), so that all of them meet the same load from the rest of the machine."""
    parts = {name: batches(events, size) for name in runs}
    seconds = dict.fromkeys(runs, 0.0)
    names = list(runs)
    for n in range(len(parts[names[0]])):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            started = time.perf_counter()
            runs[name](parts[name][n])
            seconds[name] += time.perf_counter() - started
    for name, shipped in parts.items():
        if name not in ("raw", "none"):
            ids = {e.get("session_id") for part in shipped for e in part}
            assert len(ids) == len({e.get("user_id") for e in events if not e.get("is_bot")}) + 1
    return {name: len(events) / spent for name, spent in seconds.items()}


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

        apps = {
            name: make_app(instance(name), uri(name), sessions, args.geoip)
            for name, sessions in (
                ("raw", "store"),
                ("store", "store"),
                ("redis", redis_uri),
                ("none", None),
            )
        }
        rates = interleaved(
            {
                "raw": raw_inserter(apps["raw"], uri("raw")),
                "store": shipper(apps["store"]),
                "redis": shipper(apps["redis"]),
                "none": shipper(apps["none"]),
            },
            events,
            args.batch,
        )
        batches_shipped = -(-len(events) // args.batch)
        # The enricher's own time, as the runner counts it (and metrics report it).
        spent = {
            name: apps[name].extensions[RUNNER_KEY].seconds["sessions"] / batches_shipped * 1e3
            for name in ("store", "redis")
        }
        for app in apps.values():
            delivery.close(app)
        raw = rates["raw"]
        print(f"  raw insert:                        {raw:6.0f} events/s", flush=True)
        for name, label in (
            ("store", "sessions in the store"),
            ("redis", "sessions in Redis"),
            ("none", "sessions off"),
        ):
            print(
                f"  shipped, {label:21s}     {rates[name]:6.0f} events/s, "
                f"ratio {rates[name] / raw:.2f}"
                + (f", sessions {spent[name]:.1f} ms a batch" if name in spent else ""),
                flush=True,
            )


if __name__ == "__main__":
    main()

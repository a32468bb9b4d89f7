"""gunicorn settings for rybbit-track; every value can be overridden on the command line.

Threads, not more processes, absorb the wait on store acknowledgements: each worker is one
process holding one MongoDB connection pool.
"""

import ctypes
import gc
import importlib.util
import logging
import os
import platform
import shutil
import tempfile

from gunicorn.glogging import Logger

bind = os.environ.get("RYBBIT_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("RYBBIT_WORKERS", "2"))


def _load_beside(name):
    """A module of the rybbit folder, loaded on its own: importing the rybbit package here
    would load the app into the master, and workers started after a reload (SIGHUP) would then
    keep running the old code."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rybbit", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"rybbit_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker_class():
    """gevent, whatever the store: greenlets cost less CPU than threads (bare Flask: ~1.6x the
    requests/s of gthread here), and little on the request path blocks the loop for long (an
    embedded-store commit waits there while another worker holds the file's write lock):
    MongoDB and Redis calls yield, fsyncs run in the hub's thread pool (rybbit/native.py), and
    the embedded store's commits, which do not wait for the disk by default, are shared by the
    requests ready at the time (group commit, rybbit/delivery.py).
    RYBBIT_WORKER_CLASS overrides; "gthread" gets the buffering thread worker below."""
    return os.environ.get("RYBBIT_WORKER_CLASS") or "gevent"


worker_class = _worker_class()
if worker_class == "gthread":
    # gthread gives a thread to a connection at its first byte, so clients trickling their
    # requests hold every thread (40 of them stopped 2 workers x 16 threads). This one reads
    # each request whole in the event loop first (rybbit/gunicorn_worker.py).
    worker_class = _load_beside("gunicorn_worker").BufferedThreadWorker
# gthread: many threads, for the reason above (4 -> 16 threads raised /api/track by ~1.8x).
threads = int(os.environ.get("RYBBIT_THREADS", "16"))
# Open connections per worker, idle keep-alive ones and slow clients' included: gevent and the
# buffering thread worker hold each cheaply, so a few hundred slow clients do not stop the
# others. gunicorn's default (1000) would let a flood of 512 KB batches take a gigabyte;
# more wait in the listen backlog.
worker_connections = int(os.environ.get("RYBBIT_WORKER_CONNECTIONS", "256"))
# A request never legitimately runs long: store calls are bounded by MONGO_TIMEOUT_MS.
timeout = 30
# On SIGTERM, let in-flight requests finish their writes before the worker exits.
graceful_timeout = 20
keepalive = 5
# No access log: the app logs one line per request (logger rybbit.request) with the site and
# key prefix, and without the client's IP address, which gunicorn's line would carry. An
# explicit --access-logfile still turns gunicorn's on.
accesslog = None
# gunicorn >= 25 opens a control socket at one fixed path per user; several instances on one
# machine (tests, staging) would fight over it, and nothing here uses it.
control_socket_disable = True


def _limit_malloc_arenas(arenas=2):
    """glibc gives threads their own malloc arenas (up to 8 per core), and memory freed in
    one stays resident there; with 16 threads a worker keeps several MB it no longer uses
    (bench/throughput.py: about 7 MB less RSS per worker after batch load, throughput
    unchanged). Set in the master (on_starting), so every forked worker inherits it; an explicit
    MALLOC_ARENA_MAX in the environment wins."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    m_arena_max = -8  # from glibc's malloc.h
    ctypes.CDLL(None).mallopt(m_arena_max, arenas)


def post_worker_init(worker):
    """Set the loaded app's objects aside from garbage collection; warn once when per-process
    rate-limit state would multiply the limit by the workers."""
    # A full collection otherwise walks every object the app made at start-up, pausing all
    # the worker's requests: measured 35 ms, 3 ms once they are frozen.
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _load_beside("gunicorn_worker").answer_errors_as_json()
    if _rybbit_app(worker) is None:
        return  # another app under these settings (bench/bare_app.py)
    from rybbit import delivery

    if delivery.spooled(worker.wsgi):
        # The spool and its shipper start now, not at the first event: the shipper adopts the
        # spools of workers that died (a crash, kill -9, a restart) without waiting for traffic.
        delivery.get_delivery(worker.wsgi)
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
            "up to %d times its limit. Leave RATELIMIT_STORAGE_URI unset (sqlite://, shared by "
            "this machine's workers) or set redis://... to share it.",
            worker.cfg.workers,
            worker.cfg.workers,
        )


def _rybbit_app(worker):
    """The worker's app if it is this service's (made by rybbit.create_app), else None."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None)
    if not isinstance(extensions, dict) or "rybbit.key_usage" not in extensions:
        return None
    return app


def worker_exit(server, worker):
    """Ship what this worker's spool still holds (a few seconds at most: the rest is adopted
    by another worker), then write the API keys' last_used_at times it holds (UsageRecorder)."""
    app = _rybbit_app(worker)
    if app is None:
        return  # the worker died before loading the app, or serves another app
    from rybbit import delivery
    from rybbit.store import get_store
    from rybbit.track import usage_recorder

    with app.app_context():
        delivery.close(app)
        usage_recorder(app).flush(get_store(app))


def _logging_config():
    """rybbit/logging_setup.py's settings, for gunicorn's own lines too. The file is loaded on
    its own: importing the rybbit package here would load the app into the master, and workers
    started after a reload (SIGHUP) would then keep running the old code."""
    config = _load_beside("logging_setup").dict_config()
    config["loggers"] = {"gunicorn.error": {"handlers": [], "propagate": True}}  # to the root's
    return config


class AccessLogOnlyIfAsked(Logger):
    """gunicorn's logger, but a logconfig_dict no longer turns its access log on: without an
    --access-logfile, each request costs no access-log work at all."""

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logconfig_dict = _logging_config()
logging.captureWarnings(True)  # warnings become log lines too, not stray text on stderr
logger_class = AccessLogOnlyIfAsked

METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server):
    """Limit malloc arenas (see _limit_malloc_arenas). Give prometheus_client's multiprocess
    mode an empty folder before any worker starts (and so before any imports
    prometheus_client): each worker writes its metrics there and /metrics adds them all up.
    Without PROMETHEUS_MULTIPROC_DIR, a new temporary folder."""
    _limit_malloc_arenas()
    path = os.environ.get(METRICS_DIR)
    if not path:
        os.environ[METRICS_DIR] = server.rybbit_metrics_temp_dir = tempfile.mkdtemp(
            prefix="rybbit-metrics-"
        )
    elif server.master_pid == 0:  # not a USR2 upgrade, whose old workers still write there
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):  # a previous run's values
                os.remove(os.path.join(path, name))


def child_exit(server, worker):
    """Let prometheus_client drop the live values (gauges) of a worker that is gone; its
    counters and histograms stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the temporary metrics folder made by on_starting."""
    path = getattr(server, "rybbit_metrics_temp_dir", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)

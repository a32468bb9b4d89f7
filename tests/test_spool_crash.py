"""The spool across real process deaths (kill -9) and under gevent, with child processes
running tests/spool_child.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rybbit.spool import Shipper
from tests.spool_child import sqlite_sink

CHILD = Path(__file__).with_name("spool_child.py")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes of a test, killed after it whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


def spawn(children: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    children.append(child)
    return child


def spool_dirs(root: Path) -> list[Path]:
    return [path for path in root.iterdir() if path.is_dir()] if root.exists() else []


def stored_ids(sink: Path) -> tuple[list[str], int]:
    with sqlite3.connect(sink) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM stored")]
        attempts = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    return ids, attempts


def test_kill_9_mid_stream_loses_no_acknowledged_record_and_stores_none_twice(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    root, sink = tmp_path / "spool", tmp_path / "sink.db"
    child = spawn(children, str(root), "append", str(sink))
    assert child.stdout is not None
    acked: list[str] = []
    deadline = time.monotonic() + 30
    while len(acked) < 3000 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if line.startswith("ack "):
            acked.append(line.split()[1])
    os.kill(child.pid, signal.SIGKILL)  # mid-stream: four threads are appending
    child.wait(10)
    for line in child.stdout.read().splitlines(keepends=True):  # acks still in the pipe
        if line.startswith("ack ") and line.endswith("\n"):
            acked.append(line.split()[1])
    assert len(acked) >= 3000
    shipped_by_child, _ = stored_ids(sink)
    assert shipped_by_child, "the child's own shipper should have shipped some records"

    adopter = Shipper(root, None, sqlite_sink(str(sink)), batch_size=500)
    adopter.start()
    try:
        assert adopter.flush(60)
    finally:
        adopter.stop(5)
    ids, attempts = stored_ids(sink)
    assert set(acked) <= set(ids)  # every acknowledged record is stored
    assert len(ids) == len(set(ids))
    # At least once: a batch the child delivered but did not checkpoint comes again, but
    # nothing more than that one batch (50 records).
    assert attempts - len(ids) <= 50
    assert spool_dirs(root) == []  # adopted, shipped, removed


def test_a_live_owner_is_never_adopted_and_a_dead_one_is(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    root = tmp_path / "spool"
    child = spawn(children, str(root), "hold", "25")
    assert child.stdout is not None
    ready = child.stdout.readline().split()
    assert ready[0] == "ready"
    delivered: list[bytes] = []
    shipper = Shipper(root, None, delivered.extend, adopt_interval=0.1, idle_poll=0.05)
    shipper.start()
    try:
        time.sleep(0.5)  # several adoption scans
        assert delivered == [] and shipper.stats().adopted_spools == 0
        assert [path.name for path in spool_dirs(root)] == [ready[1]]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while len(delivered) < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shipper.flush(10)
    finally:
        shipper.stop(5)
    assert [json.loads(p)["id"] for p in delivered] == [f"held-{n}" for n in range(25)]
    assert spool_dirs(root) == []


def test_two_shippers_never_adopt_the_same_orphan(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    root = tmp_path / "spool"
    child = spawn(children, str(root), "hold", "200")
    assert child.stdout is not None
    assert child.stdout.readline().startswith("ready")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    got: list[list[bytes]] = [[], []]
    shippers = [Shipper(root, None, got[n].extend, adopt_interval=0.05) for n in range(2)]
    for shipper in shippers:
        shipper.start()
    try:
        for shipper in shippers:
            assert shipper.flush(10)
    finally:
        for shipper in shippers:
            shipper.stop(5)
    assert sorted(len(batch) for batch in got) == [0, 200]


def test_under_gevent_appends_share_fsyncs_off_the_hub_and_ship(tmp_path: Path) -> None:
    """The core scenario in a process monkey-patched by gevent (as gunicorn's gevent workers
    are): greenlets appending share fdatasyncs, which run in the hub's thread pool (a ticker
    greenlet keeps running while each takes 20 ms), and every record ships in order."""
    done = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "spool"), "gevent"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["appended"] == result["delivered"] == result["distinct"] == 32 * 40
    assert result["delivered_in_order_per_writer"]
    assert result["flushed"]
    assert result["fsyncs"] <= result["appended"] // 8
    assert result["syncs"] > 0 and result["syncs_on_main_thread"] == 0
    # 20 ms syncs on the hub would freeze the ticker (1 ms sleeps) for most of the run: it
    # then ticks about once a second instead of several hundred times.
    assert result["ticks"] > 0.1 * result["elapsed"] / 0.001


def test_the_core_spool_tests_pass_under_gevent() -> None:
    """tests/test_spool.py again, in a process gevent monkey-patched before anything else
    (gunicorn's gevent workers are): threads there are greenlets, the spool's locks gevent's,
    and the fdatasyncs go through the hub's thread pool."""
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import sys, pytest, threading\n"
        "assert monkey.is_module_patched('threading')\n"
        # The suite's conftest (Flask apps, FerretDB) and the anyio plugin are not needed here
        # and do not import under gevent.
        "sys.exit(pytest.main(['-q', '--noconftest', '-p', 'no:cacheprovider',"
        " '-p', 'no:anyio', sys.argv[1]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).with_name("test_spool.py"))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout

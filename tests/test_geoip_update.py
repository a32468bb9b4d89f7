"""``flask --app app geoip update`` against real local HTTP servers, and the geo enricher picking
up a replaced (or newly arrived) database without a restart.

The "MaxMind" here is two stdlib HTTP servers on loopback: an API that wants basic auth and
redirects to a "storage" server on another origin, which (like the presigned URLs MaxMind
redirects to) refuses requests that carry an Authorization header.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import geoip2.database
import pytest
from flask import Flask
from flask.testing import FlaskClient
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from plugins.geo import GeoEnricher
from rybbit import create_app
from rybbit.enrichment import EnrichmentContext
from rybbit.geoip_update import default_sha256_url
from tests.conftest import free_port
from tests.geo_db import NETWORKS, build_city_db, city
from tests.gunicorn_service import ROOT, run_service

ACCOUNT = "1234567"
KEY = "Xy7kLicenceKey_0123456789abcdef_mmdb"
API_PATH = "/geoip/databases/GeoLite2-City/download?suffix=tar.gz"
STAMP = "20240507"
# The new database moves MaxMind's London test network to Paris.
PARIS = city("FR", "IDF", "Paris", 48.8566, 2.3522, "Europe/Paris")
NEW_NETWORKS = {**NETWORKS, "81.2.69.0/24": PARIS}
ADMIN_TOKEN = "geoip-admin-token-0123456789abcdefghij"


# ---------------------------------------------------------------- databases and archives


def build_db(
    path: Path, networks: dict[str, Any] = NEW_NETWORKS, database_type: str = "GeoLite2-City"
) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type)
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1715040000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def maxmind_archive(database: bytes, edition: str = "GeoLite2-City") -> bytes:
    """MaxMind's layout: ``<edition>_YYYYMMDD/`` with the licence files and the database."""
    folder = f"{edition}_{STAMP}"
    return tar_gz(
        {
            f"{folder}/COPYRIGHT.txt": b"Database and Contents Copyright (c) MaxMind, Inc.\n",
            f"{folder}/LICENSE.txt": b"Use of this MaxMind product is governed by ...\n",
            f"{folder}/README.txt": b"Latest copies of this database are available at ...\n",
            f"{folder}/{edition}.mmdb": database,
        }
    )


@pytest.fixture
def new_db(tmp_path: Path) -> bytes:
    return build_db(tmp_path / "new.mmdb").read_bytes()


# ---------------------------------------------------------------- HTTP servers


class LocalServer:
    """A threaded stdlib HTTP server on 127.0.0.1 answering GETs from a table of routes (path
    with query -> status, body, headers) and recording every request's path and headers."""

    def __init__(self, refuse_authorization: bool = False) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.credentials: tuple[str, str] | None = None
        self.refuse_authorization = refuse_authorization
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.seen.append((self.path, headers))
                status, body, extra = server.answer(self.path, headers)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **extra}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if self.refuse_authorization and "authorization" in headers:
            # What S3-style presigned URLs do with a second set of credentials.
            return 400, b"<Error><Code>InvalidArgument</Code></Error>", {}
        if self.credentials:
            expected = "Basic " + b64encode(":".join(self.credentials).encode()).decode()
            if headers.get("authorization") != expected:
                body = b'{"code":"UNAUTHORIZED","error":"Invalid account ID or license key"}'
                return 401, body, {"Content-Type": "application/json"}
        return self.routes.get(path, (404, b'{"code":"NOT_FOUND","error":"Not found"}', {}))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, body: bytes, status: int = 200, **headers: str) -> str:
        self.routes[path] = (status, body, headers)
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        return self.serve(path, b"", 302, Location=location)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.close()


@pytest.fixture
def storage() -> Iterator[LocalServer]:
    server = LocalServer(refuse_authorization=True)
    yield server
    server.close()


def publish_like_maxmind(
    api: LocalServer, storage: LocalServer, archive: bytes, checksum: str | None = None
) -> str:
    """Serve ``archive`` and its checksum the way MaxMind does; the download URL."""
    name = f"GeoLite2-City_{STAMP}.tar.gz"
    checksum = checksum or hashlib.sha256(archive).hexdigest()
    data = storage.serve(f"/r2/{name}?X-Amz-Signature=0a1b", archive)
    sums = storage.serve(
        f"/r2/{name}.sha256?X-Amz-Signature=2c3d", f"{checksum}  {name}\n".encode()
    )
    api.credentials = (ACCOUNT, KEY)
    api.redirect(API_PATH + ".sha256", sums)
    return api.redirect(API_PATH, data)


# ---------------------------------------------------------------- the app


@pytest.fixture
def app_config(instance_path: Path) -> dict[str, Any]:
    """The embedded store only: what is under test is the file on disk, not the store."""
    instance_path.mkdir(parents=True, exist_ok=True)
    return {
        "TESTING": True,
        "MONGO_URI": None,
        "LOAD_PLUGINS": [],
        "RATE_LIMIT": "off",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "GEOIP_RELOAD_SECONDS": 0.2,
    }


@pytest.fixture
def database(instance_path: Path) -> Path:
    return instance_path / "GeoLite2-City.mmdb"


@pytest.fixture
def old_db(database: Path) -> Path:
    """The installed database: London for 81.2.69.0/24."""
    database.parent.mkdir(parents=True, exist_ok=True)
    return build_city_db(database)


def update(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["geoip", "update", *args])


def located(path: Path, ip: str = "81.2.69.160") -> str | None:
    with geoip2.database.Reader(str(path)) as reader:
        return reader.city(ip).city.name


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".GeoLite2-City"))


# ---------------------------------------------------------------- the command


def test_update_from_maxmind_sends_credentials_only_to_maxmind(
    app: Flask, api: LocalServer, storage: LocalServer, old_db: Path, new_db: bytes
) -> None:
    old_db.chmod(0o640)  # the new file keeps the installed one's permissions
    url = publish_like_maxmind(api, storage, maxmind_archive(new_db))
    result = update(app, "--url", url, "--account-id", ACCOUNT, "--license-key", KEY)

    assert result.exit_code == 0, result.output
    assert (old_db.stat().st_mode & 0o777) == 0o640
    assert located(old_db) == "Paris"
    assert old_db.read_bytes() == new_db
    built = datetime.fromtimestamp(
        geoip2.database.Reader(str(old_db)).metadata().build_epoch, UTC
    ).date()
    assert f"installed GeoLite2-City built {built}" in result.output
    assert f"at {old_db}" in result.output and "checksum verified" in result.output
    assert "running workers reopen it within 0.2 s" in result.output
    # MaxMind's API got basic auth for both the checksum and the archive ...
    expected = "Basic " + b64encode(f"{ACCOUNT}:{KEY}".encode()).decode()
    assert api.paths() == [API_PATH + ".sha256", API_PATH]
    assert all(headers["authorization"] == expected for _, headers in api.seen)
    # ... and the redirect target on another origin got no Authorization header at all.
    assert len(storage.seen) == 2
    assert not any("authorization" in headers for _, headers in storage.seen)
    assert KEY not in result.output
    assert leftovers(old_db.parent) == []


def test_credentials_from_the_environment_stay_text(
    instance_path: Path, app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Valid JSON numbers: the RYBBIT_* JSON parsing alone would turn them into ints.
    monkeypatch.setenv("RYBBIT_MAXMIND_LICENSE_KEY", "123456789012345678")
    monkeypatch.setenv("RYBBIT_MAXMIND_ACCOUNT_ID", "42")
    config = create_app(app_config).config
    assert config["MAXMIND_LICENSE_KEY"] == "123456789012345678"
    assert config["MAXMIND_ACCOUNT_ID"] == "42"
    monkeypatch.setenv("MAXMIND_LICENSE_KEY", "unprefixed-wins")
    assert create_app(app_config).config["MAXMIND_LICENSE_KEY"] == "unprefixed-wins"


def test_the_flask_command_reads_maxmind_credentials_from_the_environment(
    tmp_path: Path, api: LocalServer, storage: LocalServer, new_db: bytes
) -> None:
    """The real ``flask --app app geoip update`` process, configured only by environment."""
    url = publish_like_maxmind(api, storage, maxmind_archive(new_db))
    instance = tmp_path / "cli-instance"
    env = {
        **os.environ,
        "RYBBIT_INSTANCE_PATH": str(instance),
        "RYBBIT_GEOIP_DOWNLOAD_URL": url,
        "MAXMIND_ACCOUNT_ID": ACCOUNT,
        "MAXMIND_LICENSE_KEY": KEY,
    }
    env.pop("MONGO_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "geoip", "update"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"at {instance / 'GeoLite2-City.mmdb'}" in result.stdout
    assert located(instance / "GeoLite2-City.mmdb") == "Paris"
    assert len(api.seen) == 2 and all("authorization" in h for _, h in api.seen)
    assert KEY not in result.stdout + result.stderr


def test_mirror_without_credentials_or_checksum(
    app: Flask, api: LocalServer, database: Path, new_db: bytes
) -> None:
    url = api.serve("/mirror/GeoLite2-City.tar.gz", maxmind_archive(new_db))
    result = update(app, "--url", url)
    assert result.exit_code == 0, result.output
    assert "no checksum to verify" in result.output and "replacing" not in result.output
    assert located(database) == "Paris"
    assert api.paths() == ["/mirror/GeoLite2-City.tar.gz"]
    assert "authorization" not in api.seen[0][1]


def test_mirror_serving_a_bare_database_with_its_own_checksum_file(
    app: Flask, api: LocalServer, old_db: Path, new_db: bytes
) -> None:
    url = api.serve("/GeoLite2-City.mmdb", new_db)
    sums = api.serve("/GeoLite2-City.mmdb.sha256", hashlib.sha256(new_db).hexdigest().encode())
    result = update(app, "--url", url, "--sha256-url", sums)
    assert result.exit_code == 0, result.output
    assert "checksum verified" in result.output and "replacing one built" in result.output
    assert located(old_db) == "Paris"


def test_default_checksum_url_follows_maxmind_urls_only() -> None:
    assert default_sha256_url("https://download.maxmind.com" + API_PATH) == (
        "https://download.maxmind.com" + API_PATH + ".sha256"
    )
    assert default_sha256_url("https://mirror.example/GeoLite2-City.tar.gz") is None


def _case_setup(case: str, api: LocalServer, storage: LocalServer, new_db: bytes) -> list[str]:
    """Configure the servers for one failure case; the command's arguments."""
    creds = ["--account-id", ACCOUNT, "--license-key", KEY]
    if case == "broken archive":
        archive = maxmind_archive(new_db)
        return ["--url", publish_like_maxmind(api, storage, archive[: len(archive) // 2]), *creds]
    if case == "corrupt archive, no checksum":
        archive = bytearray(maxmind_archive(new_db))
        archive[20:60] = b"\xff" * 40
        return ["--url", api.serve("/mirror/GeoLite2-City.tar.gz", bytes(archive))]
    if case == "key in a legacy URL":
        legacy = f"/app/geoip_download?edition_id=GeoLite2-City&license_key={KEY}&suffix=tar.gz"
        return ["--url", f"http://127.0.0.1:{free_port()}{legacy}"]
    if case == "no database in the archive":
        archive = tar_gz({f"GeoLite2-City_{STAMP}/README.txt": b"nothing here\n"})
        return ["--url", publish_like_maxmind(api, storage, archive), *creds]
    if case == "not a database":
        archive = maxmind_archive(b"\x00garbage\xff" * 500)
        return ["--url", publish_like_maxmind(api, storage, archive), *creds]
    if case == "wrong credentials":
        url = publish_like_maxmind(api, storage, maxmind_archive(new_db))
        return ["--url", url, "--account-id", ACCOUNT, "--license-key", KEY + "-wrong"]
    if case == "401 echoing the key":
        body = json.dumps({"error": f"license key {KEY} is not valid"}).encode()
        return ["--url", api.serve("/db.tar.gz", body, 401), *creds]
    if case == "not found":
        api.credentials = (ACCOUNT, KEY)
        return ["--url", api.url("/geoip/databases/GeoLite2-Cty/download?suffix=tar.gz"), *creds]
    if case == "checksum mismatch":
        url = publish_like_maxmind(api, storage, maxmind_archive(new_db), checksum="ab" * 32)
        return ["--url", url, *creds]
    if case == "server down":
        return ["--url", f"http://127.0.0.1:{free_port()}/GeoLite2-City.tar.gz", *creds]
    if case == "key over plain http":
        return ["--url", "http://mirror.example.com/GeoLite2-City.tar.gz", *creds]
    raise AssertionError(case)


FAILURES = {
    "broken archive": "not a readable tar.gz archive",
    "corrupt archive, no checksum": "not a readable tar.gz archive (ReadError",
    "key in a legacy URL": "license_key=***&suffix=tar.gz.sha256: ConnectionError",
    "no database in the archive": "has no .mmdb file",
    "not a database": "not a MaxMind database",
    "wrong credentials": "refused access (HTTP 401)",
    "401 echoing the key": "refused access (HTTP 401)",
    "not found": "not found (HTTP 404)",
    "checksum mismatch": "checksum mismatch",
    "server down": "cannot download http://127.0.0.1:",
    "key over plain http": "refusing to send the MaxMind licence key over plain http",
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_update_leaves_the_old_database_alone(
    case: str, app: Flask, api: LocalServer, storage: LocalServer, old_db: Path, new_db: bytes
) -> None:
    before = old_db.read_bytes(), old_db.stat().st_ino, old_db.stat().st_mtime_ns
    result = update(app, *_case_setup(case, api, storage, new_db))
    assert result.exit_code != 0
    assert "GeoIP update failed, database unchanged: " in result.output
    assert FAILURES[case] in result.output, result.output
    assert KEY not in result.output
    assert (old_db.read_bytes(), old_db.stat().st_ino, old_db.stat().st_mtime_ns) == before
    assert leftovers(old_db.parent) == []
    assert located(old_db) == "London"


def test_a_country_database_is_refused(
    app: Flask, api: LocalServer, old_db: Path, tmp_path: Path
) -> None:
    country = build_db(tmp_path / "country.mmdb", database_type="GeoLite2-Country")
    url = api.serve("/GeoLite2-Country.tar.gz", maxmind_archive(country.read_bytes()))
    result = update(app, "--url", url)
    assert result.exit_code != 0
    assert "is a GeoLite2-Country database, not a City one" in result.output
    assert located(old_db) == "London" and leftovers(old_db.parent) == []


def test_downloads_are_bounded_in_size(
    instance_path: Path, app_config: dict[str, Any], api: LocalServer, old_db: Path, new_db: bytes
) -> None:
    app = create_app({**app_config, "GEOIP_DOWNLOAD_MAX_BYTES": len(new_db) - 1})
    bare = update(app, "--url", api.serve("/GeoLite2-City.mmdb", new_db))
    assert bare.exit_code != 0 and "GEOIP_DOWNLOAD_MAX_BYTES" in bare.output
    # A small archive whose database inflates past the bound (a zip bomb, in miniature).
    app = create_app({**app_config, "GEOIP_DOWNLOAD_MAX_BYTES": 10_000})
    archive = maxmind_archive(bytes(1_000_000))
    assert len(archive) < 10_000
    packed = update(app, "--url", api.serve("/GeoLite2-City.tar.gz", archive))
    assert packed.exit_code != 0 and "more than GEOIP_DOWNLOAD_MAX_BYTES" in packed.output
    assert located(old_db) == "London" and leftovers(old_db.parent) == []


def test_archive_member_names_are_never_paths(
    app: Flask, api: LocalServer, database: Path, new_db: bytes, tmp_path: Path
) -> None:
    """A hostile archive naming its database ``../../escaped.mmdb`` still only fills the
    configured file."""
    archive = tar_gz({"../../escaped.mmdb": new_db})
    result = update(app, "--url", api.serve("/evil.tar.gz", archive))
    assert result.exit_code == 0, result.output
    assert located(database) == "Paris"
    assert not list(tmp_path.rglob("escaped.mmdb"))
    assert not (tmp_path.parent / "escaped.mmdb").exists()


# ---------------------------------------------------------------- hot reload


@pytest.fixture
def track(client: FlaskClient, site: dict[str, Any], api_key: str, stored_events: Any) -> Any:
    """POST one event from ``ip``; the stored event's city and country."""

    def _track(ip: str = "81.2.69.160") -> tuple[str | None, str | None]:
        body = {"api_key": api_key, "site_id": site["site_id"], "ip_address": ip}
        assert client.post("/api/track", json=body).status_code == 200
        event = stored_events()[-1]
        return event.get("country"), event.get("city")

    return _track


def mapped_deleted_files(path: Path) -> int:
    """How many replaced (deleted) copies of ``path`` this process still has mapped."""
    with open("/proc/self/maps") as maps:
        return sum(f"{path} (deleted)" in line for line in maps)


def test_running_app_picks_up_the_new_database_without_restart(
    old_db: Path,  # first: installed before the app starts
    app: Flask,
    app_config: dict[str, Any],
    track: Any,
    api: LocalServer,
    storage: LocalServer,
    new_db: bytes,
) -> None:
    assert track() == ("GB", "London")
    # The update runs as another process would: its own app on the same instance folder.
    url = publish_like_maxmind(api, storage, maxmind_archive(new_db))
    updater = create_app(app_config)
    assert (
        update(updater, "--url", url, "--account-id", ACCOUNT, "--license-key", KEY).exit_code == 0
    )
    time.sleep(0.3)  # GEOIP_RELOAD_SECONDS is 0.2
    assert track() == ("FR", "Paris")
    assert track("89.160.20.120") == ("SE", "Linköping")
    # The old reader was dropped, not leaked: its (now deleted) file is no longer mapped.
    del updater  # its own geo enricher opened the old file too, and never looks again
    gc.collect()
    if os.path.exists("/proc/self/maps"):
        assert mapped_deleted_files(old_db) == 0


def test_geo_goes_from_disabled_to_healthy_when_the_database_arrives(
    app_config: dict[str, Any],
    client: FlaskClient,
    track: Any,
    api: LocalServer,
    database: Path,
    new_db: bytes,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def geo_report() -> dict[str, Any]:
        plugins = client.get("/api/admin/plugins", headers=admin).get_json()["plugins"]
        return next(p for p in plugins if p["name"] == "geo")

    assert geo_report()["healthy"] is False
    assert "no database at" in geo_report()["status"]
    assert client.get("/readyz").status_code == 503
    assert track() == (None, None)

    url = api.serve("/GeoLite2-City.tar.gz", maxmind_archive(new_db))
    assert update(create_app(app_config), "--url", url).exit_code == 0
    time.sleep(0.3)
    # No event needed: the readiness probe itself notices the file.
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert geo_report()["healthy"] is True and geo_report()["status"] == "ok"
    assert track() == ("FR", "Paris")


def test_a_broken_file_dropped_in_place_keeps_the_working_database(
    database: Path, old_db: Path, tmp_path: Path
) -> None:
    enricher = GeoEnricher(str(database), reload_seconds=0.01)
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a database at all" * 10)
    os.replace(broken, database)
    time.sleep(0.05)
    event = enrich(enricher, "81.2.69.160")
    assert event["city"] == "London" and enricher.status() is None
    build_db(tmp_path / "fixed.mmdb").replace(database)  # and a good one after it is used
    time.sleep(0.05)
    assert enrich(enricher, "81.2.69.160")["city"] == "Paris"


def enrich(enricher: GeoEnricher, ip: str) -> dict[str, Any]:
    event: dict[str, Any] = {}
    context = EnrichmentContext(
        site={}, remote_addr=ip, client_ip=ip, headers={}, received_at=datetime.now(UTC)
    )
    enricher.enrich(event, context)
    return event


def test_no_lookup_fails_while_the_database_is_swapped_under_load(
    database: Path, old_db: Path, tmp_path: Path
) -> None:
    """Lookups on several threads while the file is replaced over and over: every event gets a
    city from one database or the other, never none (a reader closed under a lookup would
    raise and leave the event without geo fields)."""
    versions = [
        build_city_db(tmp_path / "london.mmdb").read_bytes(),
        build_db(tmp_path / "paris.mmdb").read_bytes(),
    ]
    enricher = GeoEnricher(str(database), reload_seconds=0.001)
    stop = threading.Event()
    cities: list[str | None] = []
    lock = threading.Lock()

    def work() -> None:
        seen = []
        while not stop.is_set():
            seen.append(enrich(enricher, "81.2.69.160").get("city"))
        with lock:
            cities.extend(seen)

    threads = [threading.Thread(target=work) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so lookups race with the swaps
    swaps = 0
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            swaps += 1
            staged = tmp_path / "staged.mmdb"
            staged.write_bytes(versions[swaps % 2])
            os.replace(staged, database)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert len(cities) > 1000
    assert set(cities) == {"London", "Paris"}, set(cities)


def test_reload_off_never_looks_at_the_file_again(database: Path, old_db: Path) -> None:
    enricher = GeoEnricher(str(database), reload_seconds=0)
    build_db(database.parent / "staged.mmdb").replace(database)
    time.sleep(0.05)
    assert enrich(enricher, "81.2.69.160")["city"] == "London"


# ---------------------------------------------------------------- end to end


def test_gunicorn_workers_reload_after_the_command(
    tmp_path: Path, api: LocalServer, new_db: bytes
) -> None:
    """Two real gunicorn workers, the real command in another process, no restart."""
    instance = tmp_path / "instance"
    instance.mkdir()
    build_city_db(instance / "GeoLite2-City.mmdb")
    url = api.serve("/GeoLite2-City.tar.gz", maxmind_archive(new_db))
    with run_service(
        tmp_path, None, RYBBIT_RATE_LIMIT="off", RYBBIT_GEOIP_RELOAD_SECONDS="0.5"
    ) as service:
        site = json.loads(service.flask("sites", "create", "--name", "G", "--domain", "g.example"))
        key = json.loads(service.flask("keys", "create", site["site_id"]))
        before = service.track_many(key, count=20, ip_address="81.2.69.160", pathname="/before")
        assert [r.status_code for r in before] == [200] * 20
        output = service.flask("geoip", "update", "--url", url)
        assert "installed GeoLite2-City" in output
        time.sleep(0.8)
        # The first event after the reload period makes one thread reopen the file; events
        # that other threads handle meanwhile still use the old reader, by design (plugins/geo).
        service.track_many(key, count=20, ip_address="81.2.69.160", pathname="/reloading")
        after = service.track_many(key, count=20, ip_address="81.2.69.160", pathname="/after")
        assert [r.status_code for r in after] == [200] * 20
        events = [
            json.loads(line)
            for line in service.flask("events", "export", site["site_id"]).splitlines()
        ]
        assert service.worker_pids(200) and len(service.worker_pids(200)) == 2
    by_path: dict[str, set[str]] = {}
    for event in events:
        by_path.setdefault(event["pathname"], set()).add(event.get("city"))
    by_path.pop("/reloading")
    assert by_path == {"/before": {"London"}, "/after": {"Paris"}}

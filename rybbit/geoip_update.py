"""Download a MaxMind City database and install it atomically (``flask --app app geoip update``).

MaxMind serves each edition as a tar.gz (``GeoLite2-City_YYYYMMDD/GeoLite2-City.mmdb`` plus
licence files) at ``https://download.maxmind.com/geoip/databases/<edition>/download?suffix=tar.gz``,
behind HTTP basic auth (account id : licence key), answering with a redirect to a presigned URL
on another host. Its SHA-256 is published at the same URL with ``suffix=tar.gz.sha256``.

Nothing touches the installed database until the new one has been downloaded (bounded in size
and time), checked against the published checksum, extracted and opened as a City database;
then one ``os.replace`` puts it in place, and the geo enricher of every running worker reopens
it within ``GEOIP_RELOAD_SECONDS``. On any failure the old file stays as it was and the
temporary files are removed. Error messages never contain the licence key.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import lzma
import os
import re
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib.metadata import version
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import geoip2.database
import geoip2.errors
import maxminddb
import requests
import urllib3
from flask import Flask

MAXMIND_URL = "https://download.maxmind.com/geoip/databases/{edition}/download?suffix=tar.gz"
CHUNK = 1024 * 1024
# The whole download may take at most this long, however steadily a slow server drips bytes.
TOTAL_SECONDS = 3600
# An address every City database places (MaxMind's own test network); any answer but a
# corrupt-database error proves the search tree and data section can be read.
PROBE_ADDRESS = "81.2.69.160"
OFF = ("", "off", "none", "false", "0")
SECRET_PARAMETER = re.compile(r"key|token|secret|signature|password|credential", re.IGNORECASE)
# What reading a response body can raise: the body is read through urllib3 directly, so that
# the bytes are exactly the published ones (no transparent gzip decoding).
NETWORK_ERRORS = (
    urllib3.exceptions.HTTPError,
    requests.RequestException,
    ConnectionError,
    TimeoutError,
)


class UpdateError(Exception):
    """The update failed; the message is safe to show (it never contains the licence key)."""


@dataclass(frozen=True)
class UpdateSettings:
    url: str
    sha256_url: str | None  # None: no checksum to verify
    account_id: str | None
    license_key: str | None
    edition: str
    target: str  # absolute path of the database file the geo enricher reads
    timeout: float
    max_bytes: int


@dataclass(frozen=True)
class Installed:
    path: str
    database_type: str
    build_date: date
    size: int
    previous_build_date: date | None
    sha256_verified: bool


def database_path(app: Flask) -> str:
    """``GEOIP_DATABASE``, relative to the instance folder unless absolute (as the geo plugin
    resolves it)."""
    path = str(app.config["GEOIP_DATABASE"])
    return path if os.path.isabs(path) else os.path.join(app.instance_path, path)


def default_sha256_url(url: str) -> str | None:
    """MaxMind's checksum URL for a MaxMind-style download URL (``...?suffix=tar.gz``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if ("suffix", "tar.gz") not in query:
        return None
    query = [(k, "tar.gz.sha256" if k == "suffix" else v) for k, v in query]
    return urlunsplit(parts._replace(query=urlencode(query)))


def settings_from_config(
    app: Flask,
    url: str | None = None,
    account_id: str | None = None,
    license_key: str | None = None,
    sha256_url: str | None = None,
) -> UpdateSettings:
    """The update's settings: the arguments given, else the app's configuration."""
    config = app.config
    edition = str(config.get("GEOIP_EDITION") or "GeoLite2-City")
    url = url or config.get("GEOIP_DOWNLOAD_URL") or MAXMIND_URL.format(edition=edition)
    checksum = sha256_url if sha256_url is not None else config.get("GEOIP_SHA256_URL")
    if checksum is None:
        checksum = default_sha256_url(url)
    elif checksum is False or str(checksum).strip().lower() in OFF:
        checksum = None
    return UpdateSettings(
        url=str(url),
        sha256_url=str(checksum) if checksum else None,
        account_id=_text(account_id if account_id is not None else config["MAXMIND_ACCOUNT_ID"]),
        license_key=_text(
            license_key if license_key is not None else config["MAXMIND_LICENSE_KEY"]
        ),
        edition=edition,
        target=database_path(app),
        timeout=float(config["GEOIP_DOWNLOAD_TIMEOUT"]),
        max_bytes=int(config["GEOIP_DOWNLOAD_MAX_BYTES"]),
    )


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def update_database(settings: UpdateSettings) -> Installed:
    """Download, verify and install the database; UpdateError (old file untouched) on failure."""
    try:
        return _update(settings)
    except UpdateError as exc:
        raise UpdateError(_redact(str(exc), settings)) from None
    except Exception as exc:  # disk full, permissions...: a message, never a traceback
        raise UpdateError(_redact(f"{type(exc).__name__}: {exc}", settings)) from None


def _redact(text: str, settings: UpdateSettings) -> str:
    if settings.license_key:
        text = text.replace(settings.license_key, "***")
    return text


def _update(settings: UpdateSettings) -> Installed:
    _check_request_settings(settings)
    directory = os.path.dirname(settings.target)
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(settings.target)
    temporary: list[str] = []

    def new_temp(kind: str) -> tuple[int, str]:
        fd, name = tempfile.mkstemp(prefix=f".{base}.{kind}-", suffix=".tmp", dir=directory)
        temporary.append(name)
        return fd, name

    try:
        with _session(settings) as session:
            expected = _fetch_checksum(session, settings) if settings.sha256_url else None
            fd, download = new_temp("download")
            with os.fdopen(fd, "wb") as out:
                digest = _download(session, settings, out)
        if expected is not None and digest != expected:
            raise UpdateError(
                f"checksum mismatch: {_safe_url(settings.url)} has SHA-256 {digest}, "
                f"{_safe_url(settings.sha256_url or '')} says {expected}"
            )
        if _is_archive(download):
            fd, database = new_temp("new")
            with os.fdopen(fd, "wb") as out:
                _extract_database(download, settings, out)
        else:  # a mirror serving the bare .mmdb
            database = download
        database_type, build_date = _verify(database)
        previous = _installed_build_date(settings.target)
        size = os.path.getsize(database)
        _install(database, settings.target)
        return Installed(
            settings.target, database_type, build_date, size, previous, expected is not None
        )
    finally:
        for name in temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _check_request_settings(settings: UpdateSettings) -> None:
    for url in filter(None, (settings.url, settings.sha256_url)):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpdateError(f"not an http(s) URL: {_safe_url(url)}")
        if settings.license_key and parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise UpdateError(
                f"refusing to send the MaxMind licence key over plain http to {parts.hostname}: "
                "use an https URL, or unset MAXMIND_LICENSE_KEY for a mirror that needs none"
            )
    if bool(settings.account_id) != bool(settings.license_key):
        missing = "MAXMIND_LICENSE_KEY" if settings.account_id else "MAXMIND_ACCOUNT_ID"
        raise UpdateError(f"{missing} is not set; MaxMind needs both the account id and the key")
    if not settings.license_key and urlsplit(settings.url).hostname == "download.maxmind.com":
        raise UpdateError(
            "MAXMIND_ACCOUNT_ID and MAXMIND_LICENSE_KEY are not set; MaxMind's download needs "
            "them (see docs/geoip.md), or set GEOIP_DOWNLOAD_URL to a mirror"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _safe_url(url: str) -> str:
    """The URL for messages: no user info, and secret-looking query values (MaxMind's legacy
    ``license_key=``, presigned signatures) masked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = [
        (name, "***" if SECRET_PARAMETER.search(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, host, parts.path, urlencode(query, safe="*"), ""))


@contextlib.contextmanager
def _session(settings: UpdateSettings) -> Any:
    session = requests.Session()
    try:
        if settings.account_id and settings.license_key:
            # requests drops this Authorization header when a redirect leaves the host (as
            # MaxMind's redirect to its storage host does), so the key never travels further.
            session.auth = (settings.account_id, settings.license_key)
        session.headers["User-Agent"] = f"rybbit-track/{version('rybbit-track')} geoip-update"
        # The checksum is over the bytes as published: no transparent re-compression.
        session.headers["Accept-Encoding"] = "identity"
        yield session
    finally:
        session.close()


def _get(session: requests.Session, url: str, settings: UpdateSettings) -> requests.Response:
    try:
        response = session.get(url, stream=True, timeout=(settings.timeout, settings.timeout))
    except requests.RequestException as exc:
        raise UpdateError(f"cannot download {_safe_url(url)}: {_network_reason(exc)}") from None
    if response.status_code != 200:
        detail = _error_text(response)
        response.close()
        raise UpdateError(_status_message(response.status_code, url, settings) + detail)
    return response


def _network_reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"{type(exc).__name__} (no answer within the timeout)"
    # urllib3 buries the cause ("[Errno 111] Connection refused") in a long message that also
    # repeats the URL with its query; keep only the cause.
    found = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))
    return f"{type(exc).__name__}: {found.group(0)}" if found else type(exc).__name__


def _status_message(status: int, url: str, settings: UpdateSettings) -> str:
    where = _safe_url(url)
    if status in (401, 403):
        who = "MAXMIND_ACCOUNT_ID / MAXMIND_LICENSE_KEY" if settings.license_key else "no"
        return (
            f"{where} refused access (HTTP {status}); credentials sent: {who}. "
            "Check the account id and licence key"
        )
    if status == 404:
        return f"{where} not found (HTTP 404): check GEOIP_DOWNLOAD_URL and GEOIP_EDITION"
    if status == 429:
        return f"{where} says too many downloads (HTTP 429): try again later"
    return f"{where} answered HTTP {status}"


def _error_text(response: requests.Response) -> str:
    """A short, printable excerpt of an error body (MaxMind explains itself in JSON)."""
    try:
        raw = response.raw.read(300, decode_content=True) or b""
    except Exception:  # the body is a courtesy; the status already says what failed
        return ""
    text = " ".join(raw.decode("utf-8", "replace").split())
    text = "".join(c for c in text if c.isprintable())[:200]
    return f": {text}" if text else ""


def _fetch_checksum(session: requests.Session, settings: UpdateSettings) -> str:
    """The SHA-256 from a ``sha256sum``-style file (``<hex>  GeoLite2-City_YYYYMMDD.tar.gz``)."""
    assert settings.sha256_url
    with _get(session, settings.sha256_url, settings) as response:
        try:
            text = response.raw.read(4096, decode_content=True).decode("ascii", "replace")
        except NETWORK_ERRORS as exc:
            raise UpdateError(
                f"cannot read {_safe_url(settings.sha256_url)}: {type(exc).__name__}"
            ) from None
    token = (text.split() or [""])[0].lower()
    if not re.fullmatch(r"[0-9a-f]{64}", token):
        raise UpdateError(
            f"{_safe_url(settings.sha256_url)} is not a SHA-256 checksum file "
            "(set GEOIP_SHA256_URL=off for a mirror without one)"
        )
    return token


def _download(session: requests.Session, settings: UpdateSettings, out: BinaryIO) -> str:
    """Stream the download into ``out`` within the size and time limits; its SHA-256."""
    deadline = time.monotonic() + TOTAL_SECONDS
    digest = hashlib.sha256()
    received = 0
    with _get(session, settings.url, settings) as response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > settings.max_bytes:
            raise UpdateError(
                f"{_safe_url(settings.url)} is {int(declared)} bytes, more than "
                f"GEOIP_DOWNLOAD_MAX_BYTES ({settings.max_bytes})"
            )
        try:
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                received += len(chunk)
                if received > settings.max_bytes:
                    raise UpdateError(
                        f"{_safe_url(settings.url)} sent more than GEOIP_DOWNLOAD_MAX_BYTES "
                        f"({settings.max_bytes}) bytes"
                    )
                if time.monotonic() > deadline:
                    raise UpdateError(f"the download took more than {TOTAL_SECONDS} s")
                digest.update(chunk)
                out.write(chunk)
        except NETWORK_ERRORS as exc:
            raise UpdateError(
                f"download from {_safe_url(settings.url)} broke off after {received} bytes: "
                f"{type(exc).__name__}"
            ) from None
    if declared.isdigit() and received != int(declared):
        raise UpdateError(
            f"download from {_safe_url(settings.url)} ended after {received} of {declared} bytes"
        )
    if received == 0:
        raise UpdateError(f"{_safe_url(settings.url)} sent an empty file")
    out.flush()
    os.fsync(out.fileno())
    return digest.hexdigest()


def _is_archive(path: str) -> bool:
    with open(path, "rb") as file:
        head = file.read(6)
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"
    return compressed or tarfile.is_tarfile(path)


def _extract_database(archive: str, settings: UpdateSettings, out: BinaryIO) -> None:
    """Copy the archive's database into ``out``."""
    for chunk in _database_chunks(archive, settings):
        out.write(chunk)  # outside the generator: a full disk is not a broken archive
    out.flush()
    os.fsync(out.fileno())


def _database_chunks(archive: str, settings: UpdateSettings) -> Iterator[bytes]:
    """The content of the archive's ``<edition>.mmdb`` (or only .mmdb), within the size limit.
    Member names are never used as paths, so no entry can write anywhere; only regular files
    count (no links)."""
    wanted = f"{settings.edition}.mmdb"
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            found = [m for m in members if m.isreg() and m.name.endswith(".mmdb")]
            if not found:
                raise UpdateError(
                    f"the archive from {_safe_url(settings.url)} has no .mmdb file "
                    f"(files: {', '.join(m.name for m in members[:10]) or 'none'})"
                )
            named = [m for m in found if os.path.basename(m.name) == wanted]
            if len(named) == 1:
                member = named[0]
            elif len(found) == 1:
                member = found[0]
            else:
                names = ", ".join(m.name for m in found[:10])
                raise UpdateError(
                    f"the archive has several databases and none is {wanted}: {names}"
                )
            if member.size > settings.max_bytes:
                raise UpdateError(
                    f"{member.name} is {member.size} bytes, more than GEOIP_DOWNLOAD_MAX_BYTES "
                    f"({settings.max_bytes})"
                )
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has content
            copied = 0
            while chunk := source.read(CHUNK):
                copied += len(chunk)
                if copied > settings.max_bytes:  # the header lied about the size
                    raise UpdateError(f"{member.name} is larger than GEOIP_DOWNLOAD_MAX_BYTES")
                yield chunk
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        reason = " ".join(str(exc).split())  # tarfile lists each method it tried on a line
        raise UpdateError(
            f"the download from {_safe_url(settings.url)} is not a readable tar.gz archive "
            f"({type(exc).__name__}: {reason})"
        ) from None


def _verify(path: str) -> tuple[str, date]:
    """Open the database as the geo enricher will and look an address up: its type and
    build date, or UpdateError."""
    try:
        try:
            reader = geoip2.database.Reader(path, mode=maxminddb.MODE_MMAP_EXT)
        except ValueError:  # no C extension (it raises InvalidDatabaseError for a bad file)
            reader = geoip2.database.Reader(path, mode=maxminddb.MODE_MMAP)
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise UpdateError(f"the downloaded file is not a MaxMind database: {exc}") from None
    try:
        metadata = reader.metadata()
        kind = str(metadata.database_type)
        if "City" not in kind:
            raise UpdateError(f"the downloaded database is a {kind} database, not a City one")
        try:
            reader.city(PROBE_ADDRESS)
        except geoip2.errors.AddressNotFoundError:
            pass
        except (maxminddb.InvalidDatabaseError, ValueError, TypeError, KeyError) as exc:
            raise UpdateError(f"the downloaded {kind} database is corrupt: {exc}") from None
        return kind, datetime.fromtimestamp(metadata.build_epoch, UTC).date()
    finally:
        reader.close()


def _installed_build_date(path: str) -> date | None:
    try:
        with maxminddb.open_database(path, maxminddb.MODE_MMAP) as reader:
            return datetime.fromtimestamp(reader.metadata().build_epoch, UTC).date()
    except (OSError, ValueError, maxminddb.InvalidDatabaseError):
        return None


def _install(database: str, target: str) -> None:
    """Give the new file the old one's permissions (else 0644) and rename it over the old one:
    readers see either the whole old file or the whole new one, never a mix."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o644
    os.chmod(database, mode)
    os.replace(database, target)
    directory = os.open(os.path.dirname(target), os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)

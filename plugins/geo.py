"""geo: country, region, city, coordinates and time zone from a MaxMind City database.

The database is ``GEOIP_DATABASE`` (default ``GeoLite2-City.mmdb`` in the instance folder), read
with maxminddb and memory-mapped, so all gunicorn workers share its pages. Without a database the
enricher reports itself disabled and events are stored without geo fields.

Every ``GEOIP_RELOAD_SECONDS`` (checked on the next event or status report, so the hot path
pays one clock comparison) the enricher stats the file and, when it was replaced
(``flask geoip update`` renames a new file over it), opens the new one and swaps it in; a
database that appears after start-up is picked up the same way.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import maxminddb

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl
from rybbit.site_rules import client_address, ipv4_number

log = logging.getLogger(__name__)


def _ipv4_global_ranges() -> tuple[list[int], list[bool]] | None:
    """IPv4's ``is_global`` as a table: the addresses where it may change (the ends of every
    network ``ipaddress`` names in its IPv4 constants) and its value from each one up to the
    next, asked of ``ipaddress`` itself at each start. Within one stretch an address is in
    the same named networks as the stretch's first, so ``is_global`` (a test of membership
    in them) gives the same answer there, for whatever networks this Python's version lists."""
    constants = getattr(ipaddress, "_IPv4Constants", None)  # private, though in 3.8 to 3.13
    if constants is None:
        return None  # every address then goes to ipaddress
    networks: list[ipaddress.IPv4Network] = []
    for value in vars(constants).values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, ipaddress.IPv4Network):
                networks.append(item)
            elif isinstance(item, ipaddress.IPv4Address):
                networks.append(ipaddress.IPv4Network(item))
    ends = {int(net.broadcast_address) + 1 for net in networks} - {2**32}
    starts = sorted({0} | {int(net.network_address) for net in networks} | ends)
    return starts, [ipaddress.IPv4Address(start).is_global for start in starts]


_GLOBAL_STARTS, _GLOBAL_FLAGS = _ipv4_global_ranges() or ([], [])


def lookup_address(ip: str) -> str | None:
    """The address to look up, or None for private and reserved addresses, which no database
    can place. Most visitors' addresses are distinct IPv4 ones, which a table answers without
    ``ipaddress`` (11 us to 1.5 us an address); anything else goes to ``ipaddress``."""
    number = ipv4_number(ip)
    if number is None or not _GLOBAL_STARTS:
        return _lookup_other(ip)
    return ip if _GLOBAL_FLAGS[bisect.bisect_right(_GLOBAL_STARTS, number) - 1] else None


@lru_cache(maxsize=4096)
def _lookup_other(ip: str) -> str | None:
    address = client_address(ip)
    return str(address) if address is not None and address.is_global else None


def open_reader(path: str) -> maxminddb.Reader:
    """A memory-mapped reader for a City database; ValueError for any other database.

    maxminddb's raw records (dicts), not geoip2's model objects: building those cost ~60 us a
    lookup, the raw read ~8 (the fields read below are MaxMind's documented record layout)."""
    try:
        reader = maxminddb.open_database(path, mode=maxminddb.MODE_MMAP_EXT)
    except ValueError:  # the C extension is missing: the pure-Python reader also maps the file
        reader = maxminddb.open_database(path, mode=maxminddb.MODE_MMAP)
    kind = reader.metadata().database_type
    if "City" not in kind:
        reader.close()
        raise ValueError(f"{path} is a {kind} database, not a City database")
    return reader


class GeoEnricher(Enricher):
    name = "geo"

    def __init__(self, path: str, reload_seconds: float = 0) -> None:
        self.path = path
        self.reader: maxminddb.Reader | None = None
        self._place: Callable[[str], dict[str, Any] | None] | None = None
        self.problem: str | None = None
        # (device, inode, size, mtime) of the file last opened or tried; None: no file.
        self._identity: tuple[int, int, int, int] | None = None
        self._reload_seconds = float(reload_seconds)
        self._reload_lock = threading.Lock()
        self._open(self._file_identity())
        self._next_check = (
            time.monotonic() + self._reload_seconds if self._reload_seconds > 0 else float("inf")
        )

    def status(self) -> str | None:
        if time.monotonic() >= self._next_check:  # readiness follows a new file with no traffic
            self._reload_if_replaced()
        return self.problem

    def _file_identity(self) -> tuple[int, int, int, int] | None:
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)

    def _reload_if_replaced(self) -> None:
        """Open the file again if it changed since it was last opened. One thread checks; the
        others go on with the current reader rather than wait."""
        if not self._reload_lock.acquire(blocking=False):
            return
        try:
            now = time.monotonic()
            if now < self._next_check:
                return
            self._next_check = now + self._reload_seconds
            identity = self._file_identity()
            if identity != self._identity:
                self._open(identity)
        finally:
            self._reload_lock.release()

    def _open(self, identity: tuple[int, int, int, int] | None) -> None:
        """Open the file (stat first, so a replacement racing with the open is seen next time,
        never missed). A file that cannot be opened leaves a working reader in place."""
        self._identity = identity
        if identity is None:
            if self.reader is None:
                self._disable(f"disabled, no database at {self.path}")
            else:
                log.warning("geo: %s is gone; still using the database opened before", self.path)
            return
        try:
            reader = open_reader(self.path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            if self.reader is None:
                self._disable(f"disabled, cannot read {self.path}: {exc}")
            else:
                log.warning(
                    "geo: cannot read the new %s (%s); still using the old one", self.path, exc
                )
            return
        previous = self.reader
        # One attribute assignment: each lookup uses either the old reader or the new one. The
        # old one is not closed: a thread may be between reading self.reader and its lookup, and
        # a closed reader raises ValueError (the event would lose its geo fields). Once the last
        # such lookup drops its reference the reader is freed and the old file unmapped.
        self.reader, self.problem = reader, None
        self._place = _places_of(reader)
        if previous is not None:
            metadata = reader.metadata()
            log.info(
                "geo: reopened %s (%s, built %s)",
                self.path,
                metadata.database_type,
                time.strftime("%Y-%m-%d", time.gmtime(metadata.build_epoch)),
            )

    def _disable(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("geo: %s", problem)
        self.problem = problem

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        if time.monotonic() >= self._next_check:
            self._reload_if_replaced()
        place = self._place  # this lookup's reader, even if another thread swaps in a new one
        if place is None or not context.client_ip:
            return
        fields = place(context.client_ip)
        if fields:
            event.update(fields)


def _places_of(reader: maxminddb.Reader) -> Callable[[str], dict[str, Any] | None]:
    """``_place`` on ``reader`` with a cache of its own. A visitor sends many events from one
    address: its place is looked up once. The cache lives and dies with its reader, so a
    reloaded database is read afresh and the old file is unmapped once no lookup uses it
    (a cache shared by all readers would keep every old reader alive). 8192 places ~3 MB."""
    return lru_cache(maxsize=8192)(partial(_place, reader))


def _place(reader: maxminddb.Reader, client_ip: str) -> dict[str, Any] | None:
    """The geo fields for ``client_ip``, or None when the database cannot place it."""
    ip = lookup_address(client_ip)
    if ip is None:
        return None
    try:
        found = reader.get(ip)
    except ValueError:  # not an address
        return None
    if not isinstance(found, dict):
        return None
    country = _dig(found, "country", "iso_code")
    if not isinstance(country, str) or not country:
        return None
    fields: dict[str, Any] = {"country": country}
    # Rybbit's region: the country and the first (largest) subdivision, GB-ENG for
    # Cambridge, not the most specific one (GB-CAM).
    subdivisions = found.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions:
        subdivision = _dig(subdivisions[0], "iso_code")
        if isinstance(subdivision, str) and subdivision:
            fields["region"] = f"{country}-{subdivision}"
    city = _dig(found, "city", "names", "en")
    if isinstance(city, str) and city:
        fields["city"] = city
    location = found.get("location")
    if isinstance(location, dict):
        latitude, longitude = location.get("latitude"), location.get("longitude")
        if isinstance(latitude, float | int) and isinstance(longitude, float | int):
            fields["lat"], fields["lon"] = latitude, longitude
        time_zone = location.get("time_zone")
        if isinstance(time_zone, str) and time_zone:
            fields["timezone"] = time_zone
    return fields


def _dig(record: Any, *path: str) -> Any:
    """``record[path[0]][path[1]]...``, or None where a level is missing or not a map."""
    for name in path:
        if not isinstance(record, dict):
            return None
        record = record.get(name)
    return record


@hookimpl
def register_enrichers(register: Any, app: Any) -> None:
    path = app.config["GEOIP_DATABASE"]
    if not os.path.isabs(path):
        path = os.path.join(app.instance_path, path)
    register(GeoEnricher(path, reload_seconds=float(app.config["GEOIP_RELOAD_SECONDS"] or 0)))

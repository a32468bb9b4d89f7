"""geo: country, region, city, coordinates and time zone from a MaxMind City database.

The database is ``GEOIP_DATABASE`` (default ``GeoLite2-City.mmdb`` in the instance folder), read
with geoip2 and memory-mapped, so all gunicorn workers share its pages. Without a database the
enricher reports itself disabled and events are stored without geo fields.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl
from rybbit.site_rules import client_address

log = logging.getLogger(__name__)


@lru_cache(maxsize=4096)
def lookup_address(ip: str) -> str | None:
    """The address to look up, or None for private and reserved addresses, which no database
    can place."""
    address = client_address(ip)
    return str(address) if address is not None and address.is_global else None


def open_reader(path: str) -> geoip2.database.Reader:
    """A memory-mapped reader for a City database; ValueError for any other database."""
    try:
        reader = geoip2.database.Reader(path, mode=maxminddb.MODE_MMAP_EXT)
    except ValueError:  # the C extension is missing: the pure-Python reader also maps the file
        reader = geoip2.database.Reader(path, mode=maxminddb.MODE_MMAP)
    kind = reader.metadata().database_type
    if "City" not in kind:
        reader.close()
        raise ValueError(f"{path} is a {kind} database, not a City database")
    return reader


class GeoEnricher(Enricher):
    name = "geo"

    def __init__(self, path: str) -> None:
        self.path = path
        self.reader: geoip2.database.Reader | None = None
        self.problem: str | None = None
        if not os.path.exists(path):
            self.problem = f"disabled, no database at {path}"
        else:
            try:
                self.reader = open_reader(path)
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                self.problem = f"disabled, cannot read {path}: {exc}"
        if self.problem:
            log.warning("geo: %s", self.problem)

    def status(self) -> str | None:
        return self.problem

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        ip = lookup_address(context.client_ip) if context.client_ip else None
        if self.reader is None or ip is None:
            return
        try:
            found = self.reader.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            return
        country = found.country.iso_code
        if not country:
            return
        event["country"] = country
        subdivision = found.subdivisions.most_specific.iso_code
        if subdivision:
            event["region"] = f"{country}-{subdivision}"
        city = found.city.names.get("en")
        if city:
            event["city"] = city
        if found.location.latitude is not None and found.location.longitude is not None:
            event["lat"] = found.location.latitude
            event["lon"] = found.location.longitude
        if found.location.time_zone:
            event["timezone"] = found.location.time_zone


@hookimpl
def register_enrichers(register: Any, app: Any) -> None:
    path = app.config["GEOIP_DATABASE"]
    if not os.path.isabs(path):
        path = os.path.join(app.instance_path, path)
    register(GeoEnricher(path))

"""Small MaxMind-format City databases for tests, written with mmdb-writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet


def city(
    country: str,
    subdivision: str | tuple[str, ...] | None,
    name: str | None,
    lat: float,
    lon: float,
    zone: str,
) -> dict[str, Any]:
    """A City record; ``subdivision`` may be several codes, largest first, as MaxMind lists
    them (England, then Cambridgeshire)."""
    record: dict[str, Any] = {
        "country": {"iso_code": country, "names": {"en": country}},
        "location": {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon), "time_zone": zone},
    }
    codes = (subdivision,) if isinstance(subdivision, str) else subdivision or ()
    if codes:
        record["subdivisions"] = [{"iso_code": code, "names": {"en": code}} for code in codes]
    if name:
        record["city"] = {"names": {"en": name, "de": name + " (de)"}}
    return record


NETWORKS = {
    "81.2.69.0/24": city("GB", "ENG", "London", 51.5142, -0.0931, "Europe/London"),
    "81.2.70.0/24": city("GB", ("ENG", "CAM"), "Cambridge", 52.2, 0.1167, "Europe/London"),
    "89.160.20.112/28": city("SE", "E", "Linköping", 58.4167, 15.6167, "Europe/Stockholm"),
    "2a02:cf40::/29": city("NO", None, None, 62.0, 10.0, "Europe/Oslo"),
    # A public range mapped (as real databases do) together with the private one below.
    "10.0.0.0/8": city("US", "CA", "Nowhere", 1.0, 1.0, "America/Los_Angeles"),
}


def build_city_db(path: Path, database_type: str = "GeoIP2-City") -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type)
    for network, record in NETWORKS.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path

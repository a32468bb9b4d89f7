"""What a stats query can group and filter by: each dimension and where its value comes from.

Three kinds, as in Plausible's API:

- ``event:*``: a field of each event (its page, hostname, name, a property).
- ``visit:*``: a property of the visit (session) the event belongs to, taken from the session's
  first event in the date range (its referrer, channel, UTM tags, place, device), or its first
  and last pageview (entry and exit page). A session's events all share these values.
- ``time`` and ``time:*``: the event's time, in buckets of the site's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# Where the value of an event dimension is in the stored event.
EVENT_FIELDS = {
    "event:page": "pathname",
    "event:hostname": "hostname",
    "event:name": "event_name",  # or, for events without a name, their type (see event_name)
}
# Where the value of a visit dimension is in the session's first event.
VISIT_FIELDS = {
    "visit:referrer": "referrer",
    "visit:channel": "channel",
    "visit:utm_source": "utm_source",
    "visit:utm_medium": "utm_medium",
    "visit:utm_campaign": "utm_campaign",
    "visit:utm_term": "utm_term",
    "visit:utm_content": "utm_content",
    "visit:country": "country",
    "visit:region": "region",
    "visit:city": "city",
    "visit:device": "device_type",
    "visit:browser": "browser",
    "visit:browser_version": "browser_version",
    "visit:os": "operating_system",
    "visit:os_version": "operating_system_version",
}
# Computed from the session's events rather than read from one field.
VISIT_COMPUTED = ("visit:entry_page", "visit:exit_page", "visit:source")
TIME_DIMENSIONS = ("time", "time:hour", "time:day", "time:week", "time:month")
PROPS_PREFIX = "event:props:"
# A property name: what a JSON path can name without quoting tricks, and what a client sends.
PROP_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")

NO_SOURCE = "Direct / None"  # Plausible's source for visits with neither referrer nor UTM source

KNOWN = (*EVENT_FIELDS, *VISIT_FIELDS, *VISIT_COMPUTED, *TIME_DIMENSIONS)


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # "event", "prop", "visit", "time"
    field: str  # the event's field (event, visit), the property (prop), the granularity (time)


def parse(name: str) -> Dimension | None:
    """The dimension called ``name``, or None if there is none."""
    if name in EVENT_FIELDS:
        return Dimension(name, "event", EVENT_FIELDS[name])
    if name in VISIT_FIELDS:
        return Dimension(name, "visit", VISIT_FIELDS[name])
    if name in VISIT_COMPUTED:
        return Dimension(name, "visit", name.removeprefix("visit:"))
    if name.startswith(PROPS_PREFIX):
        key = name.removeprefix(PROPS_PREFIX)
        return Dimension(name, "prop", key) if PROP_KEY.fullmatch(key) else None
    if name in TIME_DIMENSIONS:
        return Dimension(name, "time", name.partition(":")[2] or "auto")
    return None


def source_of(referrer: str | None, utm_source: str | None) -> str:
    """A visit's source: its ``utm_source``, else the referrer's host without ``www.``, else
    "Direct / None". (Plausible also maps well-known hosts to names, "Google" for
    www.google.com; we keep the host: see docs/stats.md.)"""
    if utm_source:
        return utm_source
    if referrer:
        try:
            host = urlsplit(referrer).hostname
        except ValueError:
            host = None
        if host:
            return host.removeprefix("www.")
    return NO_SOURCE

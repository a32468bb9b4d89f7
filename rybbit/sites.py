"""Sites: what events belong to. Ids are small decimal numbers, as Rybbit's are.

A deleted site keeps a tombstone so its id is never handed out again: an old client still
sending that id must get "Site not found", not land in somebody else's site.
"""

from __future__ import annotations

import logging
import secrets
import threading
from datetime import UTC, datetime
from typing import Any

from .storage import DuplicateKey
from .storage import Storage as Store

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = {
    "block_bots": True,
    "excluded_ips": [],
    "excluded_countries": [],
    "salt_user_ids": False,
    "track_ip": False,
    # Keyless (browser) events: origins accepted besides the site's domain (rybbit.origins).
    "allowed_origins": [],
    # What Rybbit's browser SDK records (GET /api/site/tracking-config), Rybbit's defaults.
    "track_initial_pageview": True,
    "track_spa_navigation": True,
    "track_url_params": True,
    "track_outbound": True,
    "web_vitals": False,
    "track_errors": False,
    "track_button_clicks": False,
    "track_copy": False,
    "track_form_interactions": False,
}


DEFAULT_TIME_ZONE = "UTC"


def create_site(
    store: Store,
    name: str,
    domain: str,
    settings: dict[str, Any] | None = None,
    time_zone: str = DEFAULT_TIME_ZONE,
) -> dict[str, Any]:
    """Insert a site with the next free numeric id and return it."""
    # The id is the document's _id, unique on every store; racing creators retry.
    for _ in range(20):
        seq = store.last_site_seq() + 1
        doc = {
            "_id": str(seq),
            "seq": seq,
            "name": name,
            "domain": domain,
            "settings": {**DEFAULT_SETTINGS, **(settings or {})},
            # IANA name; the days and hours of the site's statistics (rybbit.stats).
            "time_zone": time_zone,
            "created_at": datetime.now(UTC),
            "deleted_at": None,
            # Secret for salt_user_ids; never shown by the API.
            "user_id_salt": secrets.token_hex(32),
        }
        try:
            store.insert_site(doc)
        except DuplicateKey:
            continue
        return public_site(doc)
    raise RuntimeError("could not allocate a site id")


def find_site(store: Store, site_id: str) -> dict[str, Any] | None:
    """The live site document with this id, or None."""
    return store.find_site(site_id)


def list_sites(store: Store) -> list[dict[str, Any]]:
    return [public_site(doc) for doc in store.list_sites()]


def update_site(store: Store, site_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``name``/``domain`` and per-key ``settings`` changes; None if there is no such site."""
    update: dict[str, Any] = {k: v for k, v in changes.items() if k != "settings"}
    for key, value in (changes.get("settings") or {}).items():
        update[f"settings.{key}"] = value
    if update and not store.update_site(site_id, update):
        return None
    site = find_site(store, site_id)
    return public_site(site) if site else None


def delete_site(store: Store, site_id: str) -> int | None:
    """Delete a site: revoke its keys, delete its events, then leave a tombstone. Returns how
    many events were deleted; None if there is no such site, live or deleted.

    The tombstone comes last, so a failure half-way (a 503) leaves a live site on which the
    client's retry redoes the rest. Other processes accept events for the site until their
    cached copy expires (lookup_cache), so those can land after this returns: deleting a
    deleted site again deletes such leftovers (see schedule_leftover_purge).
    """
    site = find_site(store, site_id)
    if site is None:
        return purge_leftovers(store, site_id)
    now = datetime.now(UTC)
    store.revoke_site_keys(site_id, now)
    deleted = store.delete_site_events(site_id)
    store.update_site(site_id, {"deleted_at": now})
    return deleted


def purge_leftovers(store: Store, site_id: str) -> int | None:
    """Delete the events stored for a deleted site; how many, or None if ``site_id`` is not a
    deleted site."""
    if store.find_deleted_site(site_id) is None:
        return None
    return store.delete_site_events(site_id)


def schedule_leftover_purge(store: Store, site_id: str, delay: float) -> threading.Timer:
    """Delete the site's events once more after ``delay`` seconds, by when no process can still
    accept events for it. In the background of this process: if it exits first, the leftovers
    stay until an operator deletes the site again (``list_deleted_sites`` shows them)."""

    def purge() -> None:
        try:
            count = purge_leftovers(store, site_id)
        except Exception as exc:
            log.warning("leftover events of deleted site %s not purged: %s", site_id, exc)
            return
        if count:
            log.info(
                "deleted %d events that arrived for site %s after it was deleted", count, site_id
            )

    timer = threading.Timer(delay, purge)
    timer.daemon = True  # never holds a stopping process; the admin API can finish the job
    timer.start()
    return timer


def list_deleted_sites(store: Store) -> list[dict[str, Any]]:
    """Deleted sites, each with the number of its events still stored (leftovers)."""
    found = []
    for doc in store.list_deleted_sites():
        # site_id alone is the prefix of the events index (site_id, timestamp) on both stores:
        # an index range count, not a scan.
        count = store.count_events(doc["_id"])
        found.append(
            {
                "site_id": doc["_id"],
                "name": doc.get("name"),
                "domain": doc.get("domain"),
                "deleted_at": doc["deleted_at"],
                "events": count,
            }
        )
    return found


def settings_of(site: dict[str, Any]) -> dict[str, Any]:
    """The site's settings with defaults for any it predates."""
    return {**DEFAULT_SETTINGS, **site.get("settings", {})}


def time_zone_of(site: dict[str, Any]) -> str:
    """The site's time zone (sites made before the setting: UTC)."""
    return str(site.get("time_zone") or DEFAULT_TIME_ZONE)


def public_site(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "site_id": doc["_id"],
        "name": doc["name"],
        "domain": doc["domain"],
        "time_zone": time_zone_of(doc),
        "settings": settings_of(doc),
        "created_at": doc["created_at"],
    }

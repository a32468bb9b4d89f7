"""Sites: what events belong to. Ids are small decimal numbers, as Rybbit's are.

A deleted site keeps a tombstone so its id is never handed out again: an old client still
sending that id must get "Site not found", not land in somebody else's site.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from .store import DuplicateKey, Store

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
_LIVE = {"deleted_at": None}


def create_site(
    store: Store, name: str, domain: str, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Insert a site with the next free numeric id and return it."""
    # The id is the document's _id, unique on every store; racing creators retry.
    for _ in range(20):
        with store.op():
            last = list(store.sites.find({}, {"seq": 1}).sort("seq", -1).limit(1))
        seq = (last[0]["seq"] if last else 0) + 1
        doc = {
            "_id": str(seq),
            "seq": seq,
            "name": name,
            "domain": domain,
            "settings": {**DEFAULT_SETTINGS, **(settings or {})},
            "created_at": datetime.now(UTC),
            "deleted_at": None,
            # Secret for salt_user_ids; never shown by the API.
            "user_id_salt": secrets.token_hex(32),
        }
        try:
            with store.op():
                store.sites.insert_one(doc)
        except DuplicateKey:
            continue
        return public_site(doc)
    raise RuntimeError("could not allocate a site id")


def find_site(store: Store, site_id: str) -> dict[str, Any] | None:
    """The live site document with this id, or None."""
    with store.op():
        return store.sites.find_one({"_id": site_id, **_LIVE})


def list_sites(store: Store) -> list[dict[str, Any]]:
    with store.op():
        docs = list(store.sites.find(_LIVE).sort("seq", 1))
    return [public_site(doc) for doc in docs]


def update_site(store: Store, site_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply ``name``/``domain`` and per-key ``settings`` changes; None if there is no such site."""
    update: dict[str, Any] = {k: v for k, v in changes.items() if k != "settings"}
    for key, value in (changes.get("settings") or {}).items():
        update[f"settings.{key}"] = value
    if update:
        with store.op():
            result = store.sites.update_one({"_id": site_id, **_LIVE}, {"$set": update})
        if result.matched_count == 0:
            return None
    site = find_site(store, site_id)
    return public_site(site) if site else None


def delete_site(store: Store, site_id: str) -> bool:
    """Delete a site: revoke its keys, delete its events, then leave a tombstone.

    The tombstone comes last, so a failure half-way (a 503) leaves a live site on which the
    client's retry redoes the rest. False if there is no such live site.
    """
    if find_site(store, site_id) is None:
        return False
    now = datetime.now(UTC)
    with store.op():
        store.api_keys.update_many(
            {"site_id": site_id, "revoked_at": None}, {"$set": {"revoked_at": now}}
        )
    with store.op():
        store.events.delete_many({"site_id": site_id})
    with store.op():
        result = store.sites.update_one({"_id": site_id, **_LIVE}, {"$set": {"deleted_at": now}})
    return bool(result.matched_count)


def settings_of(site: dict[str, Any]) -> dict[str, Any]:
    """The site's settings with defaults for any it predates."""
    return {**DEFAULT_SETTINGS, **site.get("settings", {})}


def public_site(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "site_id": doc["_id"],
        "name": doc["name"],
        "domain": doc["domain"],
        "settings": settings_of(doc),
        "created_at": doc["created_at"],
    }

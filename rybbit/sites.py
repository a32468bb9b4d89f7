"""Sites: what events belong to. Ids are small decimal numbers, as Rybbit's are."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .store import DuplicateKey, Store

DEFAULT_SETTINGS: dict[str, Any] = {}


def create_site(store: Store, name: str, domain: str) -> dict[str, Any]:
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
            "settings": dict(DEFAULT_SETTINGS),
            "created_at": datetime.now(UTC),
        }
        try:
            with store.op():
                store.sites.insert_one(doc)
        except DuplicateKey:
            continue
        return public_site(doc)
    raise RuntimeError("could not allocate a site id")


def find_site(store: Store, site_id: str) -> dict[str, Any] | None:
    with store.op():
        return store.sites.find_one({"_id": site_id})


def public_site(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "site_id": doc["_id"],
        "name": doc["name"],
        "domain": doc["domain"],
        "settings": doc.get("settings", {}),
        "created_at": doc["created_at"],
    }

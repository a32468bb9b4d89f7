"""Identified visitors: which user id an anonymous visitor named itself (``/api/identify``),
and the traits kept for each user id.

``user_aliases`` maps (site, anonymous id) to a user id; the aliases enricher
(plugins/aliases.py) reads it for keyless events that come without a ``user_id``. The
anonymous id changes with the identity enricher's daily salt, so an alias serves the rest of
that day, the same bound Rybbit's own device ids have; the SDK itself sends the id it was
given on every later event anyway. ``user_profiles`` holds traits per (site, user id),
merged as Rybbit merges them: keys set to null are removed.

Both are state documents of the store (rebuildable; not journaled on MongoDB).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from .schemas import check_json_value
from .store import Store

ALIASES = "user_aliases"
PROFILES = "user_profiles"


def traits_json(traits: dict[str, Any]) -> str:
    """The traits as the JSON text their size is measured on; ValueError if not storable."""
    return json.dumps(storable_traits(traits), ensure_ascii=False, separators=(",", ":"))


def storable_traits(traits: dict[str, Any]) -> dict[str, Any]:
    """Traits with keys MongoDB would misread escaped; ValueError for what BSON cannot hold."""
    try:
        return check_json_value(traits)  # type: ignore[no-any-return]
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _alias_id(site_id: str, anonymous_id: str) -> str:
    return f"{site_id}:{anonymous_id}"


def save_alias(store: Store, site_id: str, anonymous_id: str, user_id: str, now: datetime) -> None:
    doc = {
        "_id": _alias_id(site_id, anonymous_id),
        "site_id": site_id,
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "updated_at": now,
    }
    store.put_document(ALIASES, doc)


def find_alias(store: Store, site_id: str, anonymous_id: str) -> str | None:
    """The user id the visitor named, or None."""
    found = store.find_document(ALIASES, _alias_id(site_id, anonymous_id))
    return str(found["user_id"]) if found else None


def merge_traits(
    store: Store, site_id: str, user_id: str, traits: dict[str, Any], now: datetime
) -> None:
    """Set the non-null traits and remove those given as null. Merged here rather than with
    update operators: trait keys may be anything, "" included, which no update path can name.
    Two identifies of one user at the same instant may lose one's traits (the last wins)."""
    key = {"_id": f"{site_id}:{user_id}"}
    found = store.find_document(PROFILES, key["_id"])
    merged = dict(found["traits"]) if found else {}
    for name, value in traits.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    doc = {**key, "site_id": site_id, "user_id": user_id, "traits": merged, "updated_at": now}
    store.put_document(PROFILES, doc)


def find_profile(store: Store, site_id: str, user_id: str) -> dict[str, Any] | None:
    return store.find_document(PROFILES, f"{site_id}:{user_id}")

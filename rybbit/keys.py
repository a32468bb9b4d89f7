"""API keys: generated once, shown once, stored only as a SHA-256 digest.

Keys carry 128 random bits, so a fast digest is enough: nobody can brute-force the preimage,
and looking a key up by its digest keeps the comparison free of timing leaks.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError
from .store import Store

KEY_FORMAT = re.compile(r"rb_[0-9a-f]{32}")
PREFIX_LENGTH = 11  # "rb_" and 8 hex digits: enough to tell keys apart in lists and logs


def generate_key() -> str:
    return "rb_" + secrets.token_hex(16)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("ascii")).hexdigest()


def key_prefix(api_key: str) -> str:
    return api_key[:PREFIX_LENGTH]


def create_key(store: Store, site_id: str, name: str | None = None) -> dict[str, Any]:
    """Store a new key for ``site_id``; the returned dict is the only place the key appears."""
    api_key = generate_key()
    doc = {
        "_id": "key_" + secrets.token_hex(8),
        "site_id": site_id,
        "key_hash": hash_key(api_key),
        "prefix": key_prefix(api_key),
        "name": name,
        "created_at": datetime.now(UTC),
        "last_used_at": None,
        "revoked_at": None,
        "expires_at": None,
    }
    with store.op():
        store.api_keys.insert_one(doc)
    return {
        "id": doc["_id"],
        "api_key": api_key,
        "prefix": doc["prefix"],
        "name": name,
        "site_id": site_id,
        "created_at": doc["created_at"],
    }


def authenticate(store: Store, site_id: str, api_key: str) -> dict[str, Any]:
    """The key document if ``api_key`` is a live key of ``site_id``; else a 403 ApiError."""
    if not KEY_FORMAT.fullmatch(api_key):
        raise ApiError(403, "Invalid API key")
    with store.op():
        doc = store.api_keys.find_one({"key_hash": hash_key(api_key)})
    if doc is None or doc["site_id"] != site_id or doc.get("revoked_at") is not None:
        raise ApiError(403, "Invalid API key")
    expires_at = doc.get("expires_at")
    if expires_at is not None and _aware(expires_at) <= datetime.now(UTC):
        raise ApiError(403, "Invalid API key")
    return doc


def _aware(moment: datetime) -> datetime:
    # montydb hands back naive datetimes; everything stored here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

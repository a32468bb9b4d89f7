"""API keys: generated once, shown once, stored only as a SHA-256 digest.

Keys carry 128 random bits, so a fast digest is enough: nobody can brute-force the preimage,
and looking a key up by its digest keeps the comparison free of timing leaks.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ApiError
from .storage import Storage as Store

log = logging.getLogger(__name__)

KEY_FORMAT = re.compile(r"rb_[0-9a-f]{32}")
# What a key may do: send events (ingest) and read the site's statistics (stats:read, see
# rybbit.stats). Keys made before scopes existed have none stored: they are ingest keys.
INGEST_SCOPE = "ingest"
STATS_SCOPE = "stats:read"
SCOPES = (INGEST_SCOPE, STATS_SCOPE)
DEFAULT_SCOPES = [INGEST_SCOPE]
PREFIX_LENGTH = 11  # "rb_" and 8 hex digits: enough to tell keys apart in lists and logs


def generate_key() -> str:
    return "rb_" + secrets.token_hex(16)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("ascii")).hexdigest()


def key_prefix(api_key: str) -> str:
    return api_key[:PREFIX_LENGTH]


def scopes_of(doc: dict[str, Any]) -> list[str]:
    """A key's scopes (a key stored without any is an ingest key, as all keys once were)."""
    scopes = doc.get("scopes")
    return list(scopes) if scopes else list(DEFAULT_SCOPES)


def create_key(
    store: Store,
    site_id: str,
    name: str | None = None,
    expires_at: datetime | None = None,
    scopes: list[str] | None = None,
) -> dict[str, Any]:
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
        "expires_at": expires_at,
        "scopes": [scope for scope in SCOPES if scope in (scopes or DEFAULT_SCOPES)],
    }
    store.insert_key(doc)
    return {"id": doc["_id"], "api_key": api_key, **_public_fields(doc)}


def list_keys(store: Store, site_id: str) -> list[dict[str, Any]]:
    """The site's keys, oldest first, without secrets."""
    return [public_key(doc) for doc in store.list_keys(site_id)]


def revoke_key(store: Store, site_id: str, key_id: str) -> dict[str, Any] | None:
    """Revoke at once; revoking twice keeps the first time. None if the site has no such key."""
    store.update_key(key_id, {"revoked_at": datetime.now(UTC)}, site_id=site_id, live=True)
    doc = store.find_key(key_id, site_id)
    return public_key(doc) if doc else None


def rotate_key(
    store: Store, site_id: str, key_id: str, grace_seconds: int
) -> dict[str, Any] | None:
    """A new key with the old one's name; the old one expires after ``grace_seconds``."""
    old = store.find_key(key_id, site_id)
    if old is None or old.get("revoked_at") is not None or _expired(old, datetime.now(UTC)):
        return None
    new = create_key(store, site_id, name=old.get("name"), scopes=scopes_of(old))
    ends = datetime.now(UTC) + timedelta(seconds=grace_seconds)
    current = old.get("expires_at")
    if current is None or current > ends:
        store.update_key(key_id, {"expires_at": ends})
    return {**new, "replaces": key_id, "replaced_key_expires_at": ends}


def authenticate(store: Store, site_id: str, api_key: str) -> dict[str, Any]:
    """The key document if ``api_key`` is a live key of ``site_id``; else a 403 ApiError."""
    return check_key(find_key(store, api_key), site_id)


def find_key(store: Store, api_key: str) -> dict[str, Any] | None:
    """The stored document of ``api_key`` (live or not), or None."""
    if not KEY_FORMAT.fullmatch(api_key):
        return None
    return store.find_key_by_hash(hash_key(api_key))


def check_ingest_key(doc: dict[str, Any] | None, site_id: str) -> dict[str, Any]:
    """``doc`` if it is a live key of ``site_id`` that may send events; else a 403 ApiError."""
    doc = check_key(doc, site_id)
    if INGEST_SCOPE not in (doc.get("scopes") or DEFAULT_SCOPES):  # per event: no copy
        raise ApiError(403, "This API key may not send events (it lacks the ingest scope)")
    return doc


def check_key(doc: dict[str, Any] | None, site_id: str) -> dict[str, Any]:
    """``doc`` if it is a live key of ``site_id``; else a 403 ApiError. Expiry is judged now,
    so a cached document still stops working the moment its grace period ends."""
    if (
        doc is None
        or doc["site_id"] != site_id
        or doc.get("revoked_at") is not None
        or _expired(doc, datetime.now(UTC))
    ):
        raise ApiError(403, "Invalid API key")
    return doc


def public_key(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], **_public_fields(doc)}


def _public_fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "prefix": doc["prefix"],
        "name": doc.get("name"),
        "site_id": doc["site_id"],
        "created_at": doc["created_at"],
        "last_used_at": doc.get("last_used_at"),
        "revoked_at": doc.get("revoked_at"),
        "expires_at": doc.get("expires_at"),
        "scopes": scopes_of(doc),
    }


def _expired(doc: dict[str, Any], now: datetime) -> bool:
    expires_at = doc.get("expires_at")
    return expires_at is not None and expires_at <= now


class UsageRecorder:
    """Keeps ``last_used_at`` without a write per event: at most one write per key per interval.

    Each process remembers when each key was last used and writes the latest times once the
    interval has passed since its previous write, and when the worker exits (gunicorn's
    ``worker_exit`` hook calls :meth:`flush`).
    """

    def __init__(self, interval_seconds: float) -> None:
        self.interval = interval_seconds
        self._pending: dict[str, datetime] = {}
        # -inf, not 0.0: monotonic time counts from boot, so a zero start would hold back a
        # key's first use on a machine up for less than the interval.
        self._last_flush = float("-inf")
        self._lock = threading.Lock()

    def touch(self, store: Store, key_id: str, moment: datetime) -> None:
        """Note a use of ``key_id``; write pending uses if the interval has passed.

        Never raises: the event this use belongs to is already stored.
        """
        with self._lock:
            self._pending[key_id] = moment
            if time.monotonic() - self._last_flush < self.interval:
                return
        self.flush(store)

    def flush(self, store: Store) -> None:
        """Write every pending use now; on failure keep them for the next try. Never raises."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        try:
            store.record_key_uses(pending)
        except Exception as exc:
            log.warning("could not record key usage now (%s); retrying later", type(exc).__name__)
            with self._lock:
                for pending_id, used_at in pending.items():
                    self._pending.setdefault(pending_id, used_at)

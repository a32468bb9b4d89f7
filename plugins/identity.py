"""identity: an anonymous visitor id when the client sends no ``user_id``.

The id is a hash of the site, the client IP and the user agent with a salt that is random,
changes every UTC day, and is deleted 48 hours after it was made. Once a salt is gone, nobody,
including the operator, can recompute which visitor an old id belonged to (Rybbit derives its
salt from the date, so its ids can always be recomputed).

Salts live in the store (collection ``salts``), so every worker and machine uses the same one.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from datetime import datetime, timedelta
from typing import Any

from rybbit.plugin import Enricher, EnrichmentContext, hookimpl

SALT_LIFETIME = timedelta(hours=48)


class DailySalts:
    """Today's salt, from the store, cached in the process for the rest of the day."""

    def __init__(self) -> None:
        # One tuple, replaced whole, so no thread can pair one day with another day's salt.
        self._current: tuple[str, bytes] = ("", b"")
        self._lock = threading.Lock()

    def for_day(self, store: Any, now: datetime) -> bytes:
        day = now.strftime("%Y-%m-%d")
        current_day, salt = self._current
        if day == current_day:
            return salt
        with self._lock:
            if self._current[0] != day:
                self._current = (day, self._fetch_or_create(store, day, now))
            return self._current[1]

    def _fetch_or_create(self, store: Any, day: str, now: datetime) -> bytes:
        # Ours unless another worker made the day's salt first: then theirs.
        candidate = {"_id": day, "salt": secrets.token_hex(32), "created_at": now}
        found = store.salt_for_day(candidate, now - SALT_LIFETIME)
        return bytes.fromhex(found["salt"])


def anonymous_id(salt: bytes, site_id: str, ip: str, user_agent: str) -> str:
    digest = hashlib.sha256(salt)
    for part in (site_id, ip, user_agent):
        digest.update(b"\x00" + part.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


class IdentityEnricher(Enricher):
    name = "identity"

    def __init__(self) -> None:
        self.salts = DailySalts()

    def enrich(self, event: dict[str, Any], context: EnrichmentContext) -> None:
        if event.get("user_id") or context.store is None:
            return
        salt = self.salts.for_day(context.store, context.received_at)
        user_agent = event.get("user_agent") or context.headers.get("User-Agent", "")
        event["user_id"] = anonymous_id(
            salt, str(event["site_id"]), context.client_ip or "", user_agent
        )
        event["anonymous"] = True


@hookimpl
def register_enrichers(register: Any) -> None:
    register(IdentityEnricher())

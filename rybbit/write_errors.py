"""Per-document outcomes of a bulk insert that the server answered with write errors.

An unordered ``insert_many`` stores every document it can and reports the others one by one
(``writeErrors``, each with the document's ``index``). One write may hold the events of many
requests (group commit), so each error must reach only the request that sent that document:
a duplicate ``_id`` is a repeat already stored (success), a transient code means "retry"
(503), anything else is the server refusing that document (a 400 for its sender).
"""

from __future__ import annotations

import logging
from typing import Any

from .store_errors import StoreUnavailable

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
# Codes that say the server could not take the write now, not that the document is wrong:
# HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress, PrimarySteppedDown,
# ExceededTimeLimit, SocketException, NotWritablePrimary, InterruptedAtShutdown,
# InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
# MaxTimeMSExpired, WriteConflict.
TRANSIENT_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 50, 112}
)
_MESSAGE_MAX = 300


def outcomes(details: dict[str, Any], count: int) -> list[Exception | None]:
    """One entry per document of the write: None if it is stored (or was already, as a
    duplicate), else the error its sender must get. ``details`` is a BulkWriteError's."""
    results: list[Exception | None] = [None] * count
    refused: list[int] = []
    for error in details.get("writeErrors", []):
        index, code = int(error.get("index", -1)), error.get("code")
        if not 0 <= index < count or code == DUPLICATE_KEY:
            continue
        if code in TRANSIENT_CODES:
            results[index] = StoreUnavailable(f"write error {code}")
        else:
            message = str(error.get("errmsg") or f"error code {code}")[:_MESSAGE_MAX]
            results[index] = Refused(code, message)
            refused.append(int(code) if isinstance(code, int) else -1)
    if refused:
        # The codes only: the server's messages quote the documents, i.e. client content.
        log.warning("store refused %d of %d events (codes %s)", len(refused), count, refused)
    return results


class Refused(Exception):
    """One document the server would not store, with the server's code and message."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

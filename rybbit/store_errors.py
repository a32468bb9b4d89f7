"""The two store outcomes callers handle, apart from the store module so that any module can
import them without importing the store (rybbit.store re-exports them)."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The store could not be reached or did not acknowledge in time; the client may retry."""


class DuplicateKey(Exception):
    """A document with the same unique key exists already. From a bulk insert, ``indexes``
    lists the positions of the documents refused (the others were inserted)."""

    def __init__(self, message: str, indexes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.indexes = indexes


class EventsRefused(Exception):
    """The store refused some documents of a write for what they hold (not for being down):
    ``reasons`` maps each refused event's position in the caller's list to the server's
    message; ``retry`` holds the positions of events the store could not take now (a transient
    per-document error: send them again). The caller's other events were stored."""

    def __init__(self, reasons: dict[int, str], retry: frozenset[int] = frozenset()) -> None:
        super().__init__(f"{len(reasons) + len(retry)} event(s) not stored")
        self.reasons = reasons
        self.retry = retry

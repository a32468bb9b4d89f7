"""The two store outcomes callers handle, apart from the store module so that any module can
import them without importing the store (rybbit.store re-exports them)."""

from __future__ import annotations

from collections.abc import Sequence


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


def raise_for_outcomes(outcomes: Sequence[Exception | None]) -> None:
    """Turn the per-event outcomes of one write into its sender's answer: nothing when all
    were stored; EventsRefused naming those that were not (by position) when others were:
    refused for what they hold, or to be retried (a transient per-document error);
    StoreUnavailable when none was stored, so that a request answered 503 stored nothing."""
    failed = {i: error for i, error in enumerate(outcomes) if error is not None}
    if not failed:
        return
    retry = frozenset(i for i, error in failed.items() if isinstance(error, StoreUnavailable))
    if retry and len(failed) == len(outcomes):
        raise StoreUnavailable("write error")
    reasons = {i: str(error) for i, error in failed.items() if i not in retry}
    raise EventsRefused(reasons, retry)

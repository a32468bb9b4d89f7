"""The store, as the rest of the service imports it: see the ``rybbit.storage`` package.

Kept so that ``from rybbit.store import get_store, StoreUnavailable`` (the service's modules,
third-party plugins) goes on working; new code may import from ``rybbit.storage``.
"""

from __future__ import annotations

from .storage import EXTENSION_KEY, get_store, init_app
from .storage.base import Storage
from .storage.mongo import MongoStorage, translate_errors
from .storage.sqlite import SQLiteStorage
from .store_errors import DuplicateKey, EventsRefused, StoreUnavailable

# The interface's former name.
Store = Storage

__all__ = [
    "EXTENSION_KEY",
    "DuplicateKey",
    "EventsRefused",
    "MongoStorage",
    "SQLiteStorage",
    "Store",
    "Storage",
    "StoreUnavailable",
    "get_store",
    "init_app",
    "translate_errors",
]

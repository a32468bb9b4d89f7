"""A local, durable spool of records, shipped to the store in the background.

A request is acknowledged once its event is in the spool: appended to a file and fdatasync'd
(``Spool.append``; concurrent appends share one sync). A ``Shipper`` then delivers the spooled
records to the store in batches and trims what was delivered. docs/spool.md is the operator's
version of this text.

Format (segments.py): each process writes its own directory ``<root>/<pid>-<random>/`` of
append-only segment files ``<seq>.seg``: a 16-byte header (``RBSPOOL1``, creation time), then
records framed as ``[u32 length][u32 crc32][payload]``. ``checkpoint.json`` in the directory
records how far shipping got (segment and offset), replaced atomically (write, fsync, rename).

Guarantees:

- ``append`` returns only when its records are on disk (data, size and the file's directory
  entry), so a crash of the process or of the machine after the acknowledgement loses nothing.
  A crash during an append loses at most the records of appends that had not returned; their
  torn bytes are detected by length and checksum, skipped and logged.
- Records are delivered at least once, in append order per directory: a crash between a
  delivery and its checkpoint delivers them again, so the sink must be idempotent (unique
  ``_id``; duplicate-key errors count as shipped). The checkpoint never passes a record that was
  neither shipped nor dead-lettered.
- A process killed (even with -9) leaves its directory unlocked (the kernel drops its flock):
  the next shipper that scans the root adopts it, ships it and removes it. A live owner's
  directory is never adopted.
- Records the store refuses go, with the reason, to ``<root>/dead-letter.jsonl`` before the
  checkpoint passes them; the rest keep shipping.
- Unshipped bytes are bounded by ``quota_bytes``: past it, ``append`` raises ``SpoolFull`` and
  writes nothing (answer 503 with Retry-After); shipping frees the room again.
"""

from .deadletter import DeadLetterFile
from .segments import iter_records
from .shipper import SHIPPED, Deliver, Outcome, Refused, Retry, Shipped, Shipper, ShipperStats
from .writer import Spool, SpoolBroken, SpoolClosed, SpoolError, SpoolFull

__all__ = [
    "SHIPPED",
    "DeadLetterFile",
    "Deliver",
    "Outcome",
    "Refused",
    "Retry",
    "Shipped",
    "Shipper",
    "ShipperStats",
    "Spool",
    "SpoolBroken",
    "SpoolClosed",
    "SpoolError",
    "SpoolFull",
    "iter_records",
]

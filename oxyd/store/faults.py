"""Which storage errors are worth retrying: the writer's line between "wait" and "dead-letter".

A transient fault is the machine's (a busy or locked database, a full disk, an I/O error, a
read-only file, memory): the same write succeeds once it clears, so it is retried with nothing
dropped. Anything else (a statement SQLite refuses every time, such as `too many SQL
variables` or a bad binding, or a bug in our code) fails again on every retry: retrying it
would stop storage for every tenant, so the item that causes it is isolated and dead-lettered.
A corrupt database is treated as transient too: no item is at fault, and a person must act.
"""

from __future__ import annotations

import sqlite3

# Primary result codes (extended codes keep them in the low byte).
_TRANSIENT_CODES = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        11,  # SQLITE_CORRUPT
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
        26,  # SQLITE_NOTADB
    }
)
# For errors raised without a code (older SQLite bindings, and tests that raise them by hand).
_TRANSIENT_WORDS = (
    "locked",
    "busy",
    "disk is full",
    "disk full",
    "i/o error",
    "readonly",
    "read-only",
    "unable to open",
    "out of memory",
    "malformed",
    "not a database",
)


def transient(e: BaseException) -> bool:
    """True when the same write may succeed later (retry it); False when it never will."""
    if isinstance(e, OSError | MemoryError):
        return True
    if not isinstance(e, sqlite3.Error):
        return False  # a bug: the same input takes the same path again
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _TRANSIENT_CODES
    text = str(e).lower()
    return any(w in text for w in _TRANSIENT_WORDS)

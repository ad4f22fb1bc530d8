"""Which database errors are an outage (retry later) rather than a bug, and the typed error they become.

A database that is out of reach, locked by another writer or out of space fails a call now and serves it again
later: the transport answers UNAVAILABLE with a retry delay, so clients wait and retry instead of reporting an
internal error. A malformed query or a broken constraint stays what it is.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

import sqlalchemy as sa

from orchestrator.errors import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# sqlite3 raises OperationalError for SQL mistakes too ("no such table", "syntax error"): only these messages
# are about the database's surroundings.
_SQLITE_OUTAGES = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "disk i/o error",
    "unable to open database file",
    "attempt to write a readonly database",
)
_FULL = ("database or disk is full", "no space left on device", "disk full")
# PostgreSQL SQLSTATE classes and codes that pass: 08 connection exceptions, 53 insufficient resources (53100
# disk full, 53300 too many connections), 57P01-57P03 shutdown, crash recovery, not yet accepting connections.
_PG_OUTAGE_CLASSES = ("08", "53")
_PG_OUTAGE_CODES = ("57P01", "57P02", "57P03")
_PG_DISK_FULL = "53100"


def classify(exc: BaseException) -> StoreUnavailable | None:
    """The typed error for `exc` (or an error in its chain of causes) when it is a database outage, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _one(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _one(exc: BaseException) -> StoreUnavailable | None:
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return _unavailable("the database connection was lost")
        return _one(exc.orig) if exc.orig is not None else None
    if isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError):  # the pool: no connection to be had
        return _unavailable("no database connection is free or reachable")
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        if any(marker in text for marker in _FULL):
            return _unavailable("the database is out of space", full=True)
        if any(marker in text for marker in _SQLITE_OUTAGES):
            return _unavailable(f"the database is unavailable ({text.split(':')[0]})")
        return None
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg's errors
    if sqlstate is not None or type(exc).__module__.startswith("psycopg"):
        if sqlstate == _PG_DISK_FULL:
            return _unavailable("the database is out of space", full=True)
        if sqlstate is None and type(exc).__name__ in ("OperationalError", "InterfaceError"):
            return _unavailable("the database cannot be reached")  # refused, reset: no server to give a code
        if sqlstate is not None and (sqlstate[:2] in _PG_OUTAGE_CLASSES or sqlstate in _PG_OUTAGE_CODES):
            return _unavailable("the database is unavailable")
    return None


def _unavailable(message: str, *, full: bool = False) -> StoreUnavailable:
    # The message names no host, file or user: it reaches clients. The original error stays the cause, for logs.
    hint = "; retry later" if not full else "; retry once an operator has freed space"
    return StoreUnavailable(message + hint, retry_after_seconds=5.0 if full else 2.0, full=full)


def typed(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Wraps an engine call so that a database outage leaves it as StoreUnavailable (DBOS's calls included: it
    wraps what its database raised in errors of its own, so the whole chain of causes is looked at)."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            found = classify(exc)
            if found is None or found is exc:
                raise
            raise found from exc

    return call


async def typed_events(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """`events` with a database outage met while following them raised as StoreUnavailable."""
    try:
        async for event in events:
            yield event
    except Exception as exc:
        found = classify(exc)
        if found is None or found is exc:
            raise
        raise found from exc
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:  # a watcher that stops early unsubscribes now, not when the collector gets to it
            await close()

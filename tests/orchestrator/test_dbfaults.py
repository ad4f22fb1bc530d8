"""Which database errors are outages (UNAVAILABLE with a retry delay) and which stay bugs (INTERNAL), over the
errors SQLite, psycopg and SQLAlchemy's pool raise. The SQLite lock and the PostgreSQL outage themselves are
injected into real processes in tests/faults/; this table covers the errors those runs cannot all produce."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from orchestrator import dbfaults
from orchestrator.errors import StoreUnavailable

psycopg = pytest.importorskip("psycopg")


def wrapped(orig: Exception) -> sa.exc.DBAPIError:
    return sa.exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (wrapped(sqlite3.OperationalError("database is locked")), "DATABASE_UNAVAILABLE"),
        (wrapped(sqlite3.OperationalError("disk I/O error")), "DATABASE_UNAVAILABLE"),
        (wrapped(sqlite3.OperationalError("unable to open database file")), "DATABASE_UNAVAILABLE"),
        (wrapped(sqlite3.OperationalError("database or disk is full")), "DATABASE_FULL"),
        (wrapped(psycopg.OperationalError("connection failed: Connection refused")), "DATABASE_UNAVAILABLE"),
        (wrapped(psycopg.errors.AdminShutdown("terminating connection")), "DATABASE_UNAVAILABLE"),
        (wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")), "DATABASE_UNAVAILABLE"),
        (wrapped(psycopg.errors.TooManyConnections("too many clients")), "DATABASE_UNAVAILABLE"),
        (wrapped(psycopg.errors.DiskFull("could not extend file")), "DATABASE_FULL"),
        (sa.exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"), "DATABASE_UNAVAILABLE"),
        # Wrapped again by a library (DBOS raises its own errors from its database's): found through the cause.
        (RuntimeError("DBOS failed"), "DATABASE_UNAVAILABLE"),
    ],
)
def test_outages_are_unavailable_with_a_reason_and_a_delay(error: Exception, reason: str) -> None:
    if isinstance(error, RuntimeError):
        error.__cause__ = wrapped(sqlite3.OperationalError("database is locked"))
    outage = dbfaults.classify(error)
    assert outage is not None
    assert outage.code == reason
    assert outage.retry_after_seconds >= 1.0
    assert "SELECT" not in outage.message  # no statement, path or host reaches a client


@pytest.mark.parametrize(
    "error",
    [
        wrapped(sqlite3.OperationalError("no such table: orch_sessions")),
        wrapped(sqlite3.OperationalError('near "SELEC": syntax error')),
        sa.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key")),
        sa.exc.ProgrammingError("SELECT", {}, psycopg.errors.UndefinedTable("relation does not exist")),
        ValueError("not a database error"),
    ],
)
def test_bugs_are_not_outages(error: Exception) -> None:
    assert dbfaults.classify(error) is None


async def test_typed_calls_and_event_streams_raise_the_outage_with_the_original_as_cause() -> None:
    locked = wrapped(sqlite3.OperationalError("database is locked"))

    @dbfaults.typed
    async def call() -> None:
        raise locked

    with pytest.raises(StoreUnavailable) as raised:
        await call()
    assert raised.value.__cause__ is locked

    async def events() -> object:
        yield 1
        raise locked

    received = []
    with pytest.raises(StoreUnavailable):
        async for event in dbfaults.typed_events(events()):  # type: ignore[arg-type]
            received.append(event)
    assert received == [1]

"""Waiting out database outages inside a workflow, instead of failing or stranding it.

A workflow body reads and writes the store between its phases. When the database is briefly out of reach, or its
disk briefly full, those calls wait here with jittered backoff until it answers again, for at most a long,
configurable limit; past it they raise DatabaseOutageTooLong, the workflow ends in error, and the repair pass
(orchestrator/repair.py) writes the failure with that reason. DBOS waits out outages of its own system database
the same way (its `db_retry`), except a full SQLite disk, which `wait_out_full_sqlite_disk_in_dbos` adds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator import dbfaults
from orchestrator.errors import StoreUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.1
# Short enough that a workflow notices the database is back within seconds; DBOS's own cap is 60 s.
MAX_DELAY_SECONDS = 5.0


class DatabaseOutageTooLong(StoreUnavailable):
    """The database stayed unavailable past database_retry_limit_seconds while a workflow needed it. Its message
    is the reason the workflow's failure event gives."""

    def __init__(self, message: str) -> None:  # one positional argument: DBOS pickles it into the workflow's error
        super().__init__(message)


async def wait_out(op: Callable[[], Awaitable[T]], *, what: str, limit_seconds: float) -> T:
    """`op()`, repeated with jittered exponential backoff while it fails with a database outage (dbfaults), for at
    most `limit_seconds`. Any other error is raised at once. `op` must be safe to repeat: a write that failed may
    have committed (the store's event keys make appends idempotent)."""
    started = time.monotonic()
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return await op()
        except Exception as exc:
            outage = dbfaults.classify(exc)
            if outage is None:
                raise
            waited = time.monotonic() - started
            if waited >= limit_seconds:
                raise DatabaseOutageTooLong(
                    f"{what}: the database stayed unavailable for {waited:.0f}s, longer than the "
                    f"{limit_seconds:g}s a workflow waits for it (database_retry_limit_seconds): {outage.message}"
                ) from exc
            _throttled.report(what, outage.message)
            # Full jitter around the backoff: a thousand workflows that met the same outage do not come back in step.
            await asyncio.sleep(min(delay * (0.5 + random.random()), max(0.0, limit_seconds - waited)))
            delay = min(delay * 2, MAX_DELAY_SECONDS)


class _Throttle:
    """One warning per interval for all waiting workflows together: an outage under load would otherwise log a
    line per workflow per attempt."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def report(self, what: str, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self._interval:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        logger.warning(
            "database unavailable (%s); workflows wait for it and retry (%s; %d more waits since the last warning)",
            reason,
            what,
            suppressed,
        )


_throttled = _Throttle()
_patched = False


def wait_out_full_sqlite_disk_in_dbos() -> None:
    """Makes DBOS's `db_retry` wait out a full SQLite disk, as it already waits out a locked database and (on
    PostgreSQL) a full disk or a lost connection.

    Without it, a phase that finished while the disk was full lost its recorded result: DBOS's write of the step's
    output failed, the error left the step, and the workflow reported the phase as failed although it had run.
    With it, the write waits in DBOS's thread, holding the phase's result, until space returns: the phase runs
    once and the workflow goes on. This replaces a private function of dbos 3.4 (pinned in pyproject.toml); the
    full-disk fault test (tests/faults/test_full_disk.py) fails if an upgrade changes what it replaces.
    """
    global _patched
    if _patched:
        return
    from dbos import _sys_db  # the module whose db_retry looks this function up at each call

    original: Callable[[Exception], bool] = _sys_db.retriable_sqlite_exception

    def retriable(exc: Exception) -> bool:
        if original(exc):
            return True
        outage = dbfaults.classify(exc)
        return outage is not None and outage.code == "DATABASE_FULL"

    _sys_db.retriable_sqlite_exception = retriable
    _patched = True

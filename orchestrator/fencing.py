"""Fencing: a replica whose work another replica has taken over stops before it starts or finishes a model call.

Two tokens decide who may work on what:

- Per workflow, the durable engine's ownership token: every dequeue of a workflow (also the one after a
  takeover) writes a fresh token, and DBOS refuses to record a step for any other. The engine compares the token
  its workflow body started with against the stored one before each phase and before saving a phase's result
  (with PostgreSQL, where replicas share the database; a SQLite database has one process, nobody to fence).
- Per replica, an incarnation: a fresh token written at each start into the replica's row. A survivor that takes
  a silent replica over replaces it (compare-and-set), then re-enqueues its workflows. The replica's heartbeat
  renews a LEASE, valid until shortly before any survivor could declare it dead; while it holds, no workflow of
  this replica can have been taken over, so the check before each model call costs nothing. A lapsed lease (a
  pause, a database outage) is renewed first; a heartbeat that finds the incarnation replaced means a takeover:
  every running workflow then checks its own token, and those taken over stop at once.

A replica is declared dead only by a survivor that has watched its heartbeat stay unchanged for `dead_after`
seconds of the database's own clock while the survivor's own heartbeats succeeded without a gap: a database
outage (everyone silent) or a paused survivor starts the watch again instead of ending in a takeover.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.store import Store

logger = logging.getLogger(__name__)

__all__ = ["Claim", "Fenced", "Membership", "before_model_call", "bind", "current"]

# The lease ends this fraction of `dead_after` after the heartbeat that renewed it was SENT: no survivor can
# declare the replica dead sooner than `dead_after` after that heartbeat was stored, and the margin covers clocks
# that run at slightly different rates.
LEASE_FRACTION = 0.8

Call = Callable[..., Awaitable[Any]]
# The durable engine's current ownership token of a workflow (None: nobody owns it), read off the event loop.
OwnerOf = Callable[[str], Awaitable[str | None]]


class Fenced(asyncio.CancelledError):
    """This replica no longer owns the workflow: another replica took it over. A cancellation, so that nothing
    records it as the outcome of the step or the workflow (DBOS leaves the workflow to its new owner) and no
    `except Exception` stops it."""


class Claim:
    """What one workflow body runs under: the durable engine's ownership token it started with, and the
    replica's membership, whose lease says whether a takeover can have happened since."""

    def __init__(self, membership: Membership, session_id: str, token: str | None) -> None:
        self.membership = membership
        self.session_id = session_id
        self.token = token
        self._generation = membership.generation  # takeovers of this replica known when last verified

    async def owned(self) -> bool:
        """Whether the durable engine still has this body's token as the workflow's owner (a database read)."""
        if self.token is None:
            return True
        return await self.membership.owner_of(self.session_id) == self.token

    async def verify(self) -> None:
        """Before a phase starts or its result is saved: the lease holds, and where replicas share the database,
        the stored token is still this body's. Raises Fenced otherwise."""
        await self.check()
        if self.membership.shared and not await self.owned():
            raise Fenced(f"workflow {self.session_id} was taken over by another replica")

    async def check(self) -> None:
        """Before a model call: free while the lease holds; after a takeover of this replica, the token is read
        to learn whether this workflow was among those taken. Raises Fenced when it was."""
        await self.membership.hold_lease()
        if self._generation != self.membership.generation:
            if not await self.owned():
                raise Fenced(f"workflow {self.session_id} was taken over by another replica")
            self._generation = self.membership.generation


_claim: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("orchestrator_claim", default=None)


def bind(claim: Claim) -> None:
    """Runs the rest of the current task (and the tasks it starts: phase steps, model calls) under `claim`."""
    _claim.set(claim)


def current() -> Claim | None:
    return _claim.get()


async def before_model_call() -> None:
    """Raises Fenced when the workflow this task runs was taken over. Free while the replica's lease holds;
    outside a workflow body (the phase runner called directly) there is nothing to check."""
    claim = _claim.get()
    if claim is not None:
        await claim.check()


class Membership:
    """This replica's row in the replica table: its incarnation, heartbeat and lease, and the watch over the
    others' heartbeats that decides when one of them is dead. `read` and `write` run blocking store calls off
    the event loop; `on_taken_over` is told when a heartbeat finds this replica taken over."""

    def __init__(
        self,
        store: Store,
        replica_id: str,
        *,
        heartbeat_seconds: float,
        dead_after_seconds: float,
        shared: bool,
        read: Call,
        write: Call,
        owner_of: OwnerOf,
        on_taken_over: Callable[[], None],
    ) -> None:
        self.store = store
        self.replica_id = replica_id
        self.heartbeat_seconds = heartbeat_seconds
        self.dead_after_seconds = dead_after_seconds
        self.shared = shared
        self.owner_of = owner_of
        self._read = read
        self._write = write
        self._on_taken_over = on_taken_over
        self.incarnation = ""
        self.generation = 0  # how often this replica was found taken over since it started
        self._lease_until = 0.0  # monotonic
        self._last_beat = 0.0  # monotonic time the last successful heartbeat returned
        # Other replicas' heartbeats as last seen: id -> (last_seen, incarnation, database time first seen so).
        self._watch: dict[str, tuple[float, str, float]] = {}
        self._renewing = asyncio.Lock()
        self._beating = asyncio.Lock()
        self._unregistered = False
        self._retry_at = 0.0  # monotonic time the next renewal may be tried after a failed one
        self._warned_at = -1e9

    def claim(self, session_id: str, token: str | None) -> Claim:
        return Claim(self, session_id, token)

    async def register(self) -> None:
        """Starts a new incarnation: whatever still runs under an older one (a previous process with this id that
        was paused, not dead) finds itself taken over at its next heartbeat."""
        incarnation = uuid.uuid4().hex
        sent = time.monotonic()
        await self._write(self.store.register_replica, self.replica_id, incarnation)
        self.incarnation = incarnation
        self._renewed(sent)

    def _renewed(self, sent: float) -> None:
        self._lease_until = sent + LEASE_FRACTION * self.dead_after_seconds
        now = time.monotonic()
        if now - self._last_beat > 2 * self.heartbeat_seconds + self.dead_after_seconds / 4:
            # A gap in our own heartbeats (a pause, a stall, a slow database): the others' silence was not watched
            # all along, so the watch starts again.
            self._watch.clear()
        self._last_beat = now

    async def heartbeat(self) -> bool:
        """Says this replica is alive. Returns False when it found itself taken over: then its running workflows
        check their tokens (`on_taken_over`), and it registers a new incarnation for new work. A database error
        propagates, and restarts the watch over the others (nobody's silence can be judged meanwhile)."""
        async with self._beating:  # one at a time: the duty's and a lapsed lease's renewal never race
            if self._unregistered:  # taken over, and registering again failed: try that again, count nothing
                await self.register()
                self._unregistered = False
                return True
            incarnation = self.incarnation
            sent = time.monotonic()
            try:
                alive = await self._write(self.store.renew_replica, self.replica_id, incarnation)
            except BaseException:
                self._watch.clear()
                self._last_beat = 0.0
                raise
            if alive:
                self._renewed(sent)
                return True
            logger.error(
                "replica %s was taken over by another replica; its workflows that were taken stop here",
                self.replica_id,
            )
            self.generation += 1
            self._lease_until = 0.0
            self._unregistered = True
            self._on_taken_over()
            await self.register()
            self._unregistered = False
            return False

    async def hold_lease(self) -> None:
        """Returns while the lease holds; renews a lapsed one first, waiting out a database that cannot be reached
        (no model call starts meanwhile). One renewal at a time, and one attempt per heartbeat interval, however
        many workflows wait."""
        while time.monotonic() >= self._lease_until:
            async with self._renewing:
                if time.monotonic() < self._lease_until:
                    return  # another task renewed it meanwhile
                wait = self._retry_at - time.monotonic()
                if wait <= 0:
                    try:
                        await self.heartbeat()
                        continue
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        wait = self.heartbeat_seconds
                        self._retry_at = time.monotonic() + wait
                        if time.monotonic() - self._warned_at > 10:
                            self._warned_at = time.monotonic()
                            logger.warning(
                                "cannot renew the lease of replica %s (%s); no model call starts until it is renewed",
                                self.replica_id,
                                type(exc).__name__,
                            )
            await asyncio.sleep(wait)

    async def dead_replicas(self) -> list[tuple[str, float, str]]:
        """Other replicas whose heartbeat this one has watched stay unchanged for `dead_after` seconds (database
        clock) while its own heartbeats succeeded: (id, last_seen, incarnation) of each, to take over."""
        if time.monotonic() - self._last_beat > 2 * self.heartbeat_seconds + self.dead_after_seconds / 4:
            self._watch.clear()  # our own heartbeat is failing or late: judge nobody
            return []
        now, rows = await self._read(self.store.replica_heartbeats, self.replica_id)
        dead = []
        for replica_id, (last_seen, incarnation) in rows.items():
            seen = self._watch.get(replica_id)
            if seen is None or seen[:2] != (last_seen, incarnation):
                self._watch[replica_id] = (last_seen, incarnation, now)
            elif now - seen[2] >= self.dead_after_seconds:
                dead.append((replica_id, last_seen, incarnation))
        for gone in set(self._watch) - set(rows):
            del self._watch[gone]
        return dead

    async def take_over(self, replica_id: str, last_seen: float, incarnation: str) -> str | None:
        """Fences a dead replica: replaces its incarnation unless it has beaten (or been taken) since it was
        watched. Returns the token to forget it with once its work is recovered; None when it was alive."""
        token = f"taken-over-by:{self.replica_id}:{uuid.uuid4().hex[:12]}"
        taken = await self._write(self.store.claim_replica, replica_id, last_seen, incarnation, token)
        self._watch.pop(replica_id, None)
        return token if taken else None

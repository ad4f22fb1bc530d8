"""The failover rules of orchestrator/fencing.py on a real SQLite store: a replica is declared dead only after its
heartbeat was watched standing still while the watcher's own heartbeats succeeded; a taken-over replica learns it
at its next heartbeat; a workflow that was taken stops before its next model call, one that was not goes on.

The sleeps let the time the rules are about pass (heartbeat intervals, the dead-after threshold); every wait for
an outcome is a condition with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator import fencing
from orchestrator.agents import AgentSettings, PhaseRequest, PhaseRunner
from orchestrator.fencing import Fenced, Membership
from orchestrator.store import Store

pytestmark = pytest.mark.timeout(30)

HEARTBEAT = 0.05
DEAD_AFTER = 0.4


class Database:
    """Runs the store's blocking calls in a thread; `down` makes every call fail as an outage would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.calls = 0

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("database unreachable")
        return await asyncio.to_thread(fn, *args)


@pytest.fixture
def database(tmp_path: Path) -> Database:
    store = Store(f"sqlite:///{tmp_path / 'fencing.sqlite'}")
    store.create_schema()
    return Database(store)


def member(database: Database, replica_id: str, owners: dict[str, str] | None = None) -> tuple[Membership, list[int]]:
    taken: list[int] = []

    async def owner_of(session_id: str) -> str | None:
        return (owners or {}).get(session_id)

    membership = Membership(
        database.store,
        replica_id,
        heartbeat_seconds=HEARTBEAT,
        dead_after_seconds=DEAD_AFTER,
        shared=False,
        read=database.call,
        write=database.call,
        owner_of=owner_of,
        on_taken_over=lambda: taken.append(1),
    )
    return membership, taken


async def _beat(*members: Membership) -> None:
    for membership in members:
        await membership.heartbeat()
    await asyncio.sleep(HEARTBEAT)


async def test_a_silent_replica_is_taken_over_after_being_watched_and_learns_it_when_it_beats(
    database: Database,
) -> None:
    a, _ = member(database, "a")
    b, b_taken = member(database, "b")
    await a.register()
    await b.register()
    watching = time.monotonic()
    while time.monotonic() - watching < 2 * DEAD_AFTER:  # both beat: nobody is dead
        await _beat(a, b)
        assert await a.dead_replicas() == []
    silent = time.monotonic()
    while not (dead := await a.dead_replicas()):  # b stops beating
        assert time.monotonic() - silent < 5, "the silent replica was never declared dead"
        await _beat(a)
    assert time.monotonic() - silent >= DEAD_AFTER
    assert [replica for replica, _, _ in dead] == ["b"]
    assert await a.take_over(*dead[0]) is not None
    assert await a.take_over(*dead[0]) is None  # of several survivors, one takes it over

    old = b.incarnation
    assert await b.heartbeat() is False  # it wakes: taken over
    assert b_taken == [1] and b.generation == 1 and b.incarnation != old
    assert await b.heartbeat() is True  # its new incarnation takes new work


async def test_a_database_outage_for_everyone_declares_nobody_dead(database: Database) -> None:
    a, a_taken = member(database, "a")
    b, b_taken = member(database, "b")
    await a.register()
    await b.register()
    for _ in range(3):
        await _beat(a, b)
        assert await a.dead_replicas() == []
    database.down = True
    outage = time.monotonic()
    while time.monotonic() - outage < 2 * DEAD_AFTER:
        for replica in (a, b):
            with pytest.raises(ConnectionRefusedError):
                await replica.heartbeat()
        assert await a.dead_replicas() == []  # it cannot beat itself: it judges nobody
        await asyncio.sleep(HEARTBEAT)
    database.down = False
    back = time.monotonic()
    while time.monotonic() - back < 2 * DEAD_AFTER:  # a comes back first, b a heartbeat later
        await _beat(a)
        assert await a.dead_replicas() == []
        await _beat(b)
    assert a_taken == b_taken == []


async def test_a_survivor_that_was_paused_does_not_take_over_a_replica_that_kept_beating(database: Database) -> None:
    a, _ = member(database, "a")
    b, _ = member(database, "b")
    await a.register()
    await b.register()
    await _beat(a, b)
    assert await a.dead_replicas() == []
    paused = time.monotonic()
    while time.monotonic() - paused < 2 * DEAD_AFTER:  # a is paused; b goes on
        await _beat(b)
    await b.heartbeat()
    assert await a.dead_replicas() == []  # b's heartbeat moved on: not dead


async def test_a_taken_workflow_is_fenced_before_its_next_model_call_and_others_go_on(database: Database) -> None:
    owners = {"taken": "token-1", "kept": "token-2"}
    a, _ = member(database, "a")
    b, _ = member(database, "b", owners)
    await a.register()
    await b.register()
    taken, kept = b.claim("taken", "token-1"), b.claim("kept", "token-2")
    before = database.calls
    await taken.check()
    assert database.calls == before  # while the lease holds, a check costs no database call

    _, rows = await database.call(database.store.replica_heartbeats, "a")
    assert await a.take_over("b", *rows["b"]) is not None
    owners["taken"] = "the-survivors-token"  # the survivor's dequeue wrote its own token
    await asyncio.sleep(fencing.LEASE_FRACTION * DEAD_AFTER)  # b's lease lapses (it was paused, say)
    await kept.check()  # the renewal finds b taken over; this workflow was not among those taken
    assert b.generation == 1
    with pytest.raises(Fenced):
        await taken.check()


async def test_the_phase_runner_makes_no_model_call_for_a_workflow_that_was_taken(database: Database) -> None:
    recorded: list[str] = []

    class Observer:
        def model_request(self, model: str, outcome: str, seconds: float) -> None:
            recorded.append(outcome)

        def model_retry(self, model: str, reason: str) -> None: ...

        def model_usage(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None: ...

        def sandbox_run(self, outcome: str, seconds: float) -> None: ...

    owners = {"session": "token"}
    b, _ = member(database, "b", owners)
    await b.register()
    runner = PhaseRunner(AgentSettings(), observer=Observer())
    request = PhaseRequest(
        session_id="session", workflow_type="design", phase="requirements", role="analyst", requirements="a todo app"
    )

    async def run_under(claim: fencing.Claim) -> Any:
        fencing.bind(claim)
        return await runner.run(request)

    claim = b.claim("session", "token")
    try:
        await asyncio.create_task(run_under(claim))
        assert recorded == ["ok"]  # the offline model answered: one model call
        owners["session"] = "another-replicas-token"
        b.generation += 1  # a heartbeat found b taken over
        with pytest.raises(Fenced):
            await asyncio.create_task(run_under(claim))
        assert recorded == ["ok"]
    finally:
        await runner.aclose()

"""Crashes and replicas with real processes: kill -9 mid-phase on SQLite, and two replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from orchestrator.store import Store
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import postgres_url
from tests.service.test_grpc_api import watch_all

ROOT = Path(__file__).resolve().parents[2]
FULL = ["requirements", "design", "implementation", "tests", "review", "documentation"]
pytestmark = pytest.mark.slow


class Replica:
    """`python -m tests.harness` in its own process: the real service with a slow scripted model."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        calls: Path,
        database_url: str | None = None,
        delay: float = 0.4,
        per_replica: int = 0,
    ) -> None:
        self.name, self.tmp, self.calls, self.database_url, self.delay = name, tmp, calls, database_url, delay
        self.per_replica = per_replica
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Replica:
        port_file = self.tmp / f"{self.name}.port.{uuid.uuid4().hex}"
        args = [
            sys.executable, "-m", "tests.harness",
            "--data-dir", str(self.tmp / f"data-{self.name}" if self.database_url else self.tmp / "data"),
            "--port-file", str(port_file),
            "--calls-file", str(self.calls),
            "--delay", str(self.delay),
            "--replica-id", self.name,
        ]  # fmt: skip
        if self.database_url:
            args += ["--database-url", self.database_url]
        if self.per_replica:
            args += ["--per-replica", str(self.per_replica)]
        log = open(self.tmp / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"replica {self.name} did not start:\n{(self.tmp / f'{self.name}.log').read_text()[-3000:]}"
                )
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def stub(self, channel_store: list[grpc.aio.Channel]) -> pb_grpc.OrchestratorServiceStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        channel_store.append(channel)
        return pb_grpc.OrchestratorServiceStub(channel)


def read_calls(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[1:4]) for line in path.read_text().splitlines() if line.startswith("start ")]  # type: ignore[misc]


async def wait_states(stub: pb_grpc.OrchestratorServiceStub, ids: list[str], ok: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = {}
        for session_id in ids:
            statuses[session_id] = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id))
        if all(ok(s) for s in statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            raise AssertionError(
                f"states not reached: {[(s.session_id[:8], s.state, s.progress) for s in statuses.values()]}"
            )
        await asyncio.sleep(0.1)


def completed_phases(store_url: str, ids: list[str]) -> set[tuple[str, str]]:
    store = Store(store_url)
    try:
        done = set()
        for session_id in ids:
            status = store.status(session_id)
            assert status is not None
            done |= {(session_id, name) for name in status.phases_completed}
        return done
    finally:
        store.dispose()


@pytest.fixture
def channels() -> Iterator[list[grpc.aio.Channel]]:
    store: list[grpc.aio.Channel] = []
    yield store


async def _close(channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()


async def test_kill_9_mid_phase_then_restart_finishes_everything_once(
    tmp_path: Path, channels: list[grpc.aio.Channel]
) -> None:
    calls = tmp_path / "calls.log"
    replica = Replica(tmp_path, "solo", calls).start()
    try:
        stub = replica.stub(channels)
        ids = [
            (
                await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements=f"w{i}", workflow_type="full"))
            ).session_id
            for i in range(10)
        ]
        watched = await _partial_watch(stub, ids[0], stop_after=4)
        # Every workflow has finished at least two phases and is inside another one.
        await wait_states(stub, ids, lambda s: len(s.phases_completed) >= 2, timeout=60)
        replica.kill9()
        await _close(channels)
        channels.clear()
        done_at_kill = completed_phases(f"sqlite:///{tmp_path / 'data' / 'orchestrator.sqlite'}", ids)
        assert len(done_at_kill) >= 20

        replica = Replica(tmp_path, "solo", calls).start()
        stub = replica.stub(channels)
        statuses = await wait_states(stub, ids, lambda s: s.state == enums.WORKFLOW_STATE_COMPLETED, timeout=90)
        assert all(list(s.phases_completed) == FULL for s in statuses.values())
        runs = Counter((session, phase) for session, phase, _ in read_calls(calls))
        rerun = {key: runs[key] for key in done_at_kill if runs[key] != 1}
        assert rerun == {}, f"completed phases ran again: {rerun}"
        assert all(runs[(s, p)] >= 1 for s in ids for p in FULL)
        resumed = await watch_all(stub, ids[0], after=watched[-1])
        assert [e.sequence for e in resumed] == list(range(watched[-1] + 1, statuses[ids[0]].last_sequence + 1))
        for session_id in ids:
            events = await watch_all(stub, session_id)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    finally:
        replica.stop()
        await _close(channels)


async def _partial_watch(stub: pb_grpc.OrchestratorServiceStub, session_id: str, stop_after: int) -> list[int]:
    """A watcher whose connection drops after a few events: the sequences it saw."""
    seen = []
    call = stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id))
    async for response in call:
        if response.type != enums.EVENT_TYPE_HEARTBEAT:
            seen.append(response.sequence)
        if len(seen) == stop_after:
            call.cancel()
            break
    return seen


# PostgreSQL --------------------------------------------------------------------------------------------------


@pytest.fixture
def pg_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    base = postgres_url()
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except Exception as exc:
        if os.environ.get("ORCHESTRATOR_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL at {base} is required (ORCHESTRATOR_REQUIRE_POSTGRES) but unreachable: {exc}")
        pytest.skip(f"no PostgreSQL reachable at {base} ({exc}); set ORCHESTRATOR_TEST_POSTGRES_URL")
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.postgres
async def test_two_replicas_share_the_queue_and_survivors_take_over_a_killed_one(
    tmp_path: Path, pg_database: str, channels: list[grpc.aio.Channel]
) -> None:
    calls = tmp_path / "calls.log"
    a = Replica(tmp_path, "replica-a", calls, pg_database, per_replica=6).start()
    b = Replica(tmp_path, "replica-b", calls, pg_database, per_replica=6).start()
    try:
        stub_a, stub_b = a.stub(channels), b.stub(channels)
        ids = []
        for i in range(12):
            stub = stub_a if i % 2 else stub_b
            ids.append(
                (
                    await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements=f"w{i}", workflow_type="full"))
                ).session_id
            )
        # Any replica answers for any session: A sees all of them.
        await wait_states(stub_a, ids, lambda s: len(s.phases_completed) >= 2, timeout=60)
        pids = Counter(pid for _, _, pid in read_calls(calls))
        assert len(pids) == 2, f"both replicas should run work: {pids}"

        b.kill9()
        done_at_kill = completed_phases(pg_database.replace("postgresql://", "postgresql+psycopg://"), ids)
        # B is not restarted: A notices it is silent and recovers its workflows on its own.
        statuses = await wait_states(stub_a, ids, lambda s: s.state == enums.WORKFLOW_STATE_COMPLETED, timeout=120)
        assert all(list(s.phases_completed) == FULL for s in statuses.values())
        runs = Counter((session, phase) for session, phase, _ in read_calls(calls))
        assert {k: runs[k] for k in done_at_kill if runs[k] != 1} == {}
        for session_id in ids:
            events = await watch_all(stub_a, session_id)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    finally:
        a.stop()
        b.stop()
        await _close(channels)


@pytest.mark.postgres
async def test_watch_and_cancel_across_replicas(
    tmp_path: Path, pg_database: str, channels: list[grpc.aio.Channel]
) -> None:
    calls = tmp_path / "calls.log"
    a = Replica(tmp_path, "replica-a", calls, pg_database, delay=1.5, per_replica=2).start()
    b = Replica(tmp_path, "replica-b", calls, pg_database, delay=1.5, per_replica=2).start()
    try:
        stub_a, stub_b = a.stub(channels), b.stub(channels)
        ids = [
            (
                await stub_a.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements=f"x{i}", workflow_type="design"))
            ).session_id
            for i in range(4)
        ]
        await wait_states(stub_b, ids, lambda s: s.state == enums.WORKFLOW_STATE_RUNNING, timeout=30)
        by_pid = {session: pid for session, _, pid in read_calls(calls)}
        pid_b = str(b.process.pid if b.process else "")
        on_b = [s for s in ids if by_pid.get(s) == pid_b]
        on_a = [s for s in ids if s not in on_b]
        assert on_a and on_b, f"expected work on both replicas: {by_pid}"
        # Cancel a workflow running on B through A: B interrupts its phase (no second phase starts).
        victim = on_b[0]
        watcher = asyncio.create_task(watch_all(stub_a, victim))
        await stub_a.CancelWorkflow(pb.CancelWorkflowRequest(session_id=victim))
        events = await asyncio.wait_for(watcher, 10)
        assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_CANCELLED
        # A watcher on A follows a workflow that B runs, to its end, without gaps.
        other = on_b[1] if len(on_b) > 1 else on_a[0]
        followed = await asyncio.wait_for(watch_all(stub_a, other), 30)
        assert followed[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        assert [e.sequence for e in followed] == list(range(1, len(followed) + 1))
        await wait_states(
            stub_a, [s for s in ids if s != victim], lambda s: s.state == enums.WORKFLOW_STATE_COMPLETED, timeout=30
        )
        # Nothing ran that the events do not show started: the cancel stopped the workflow where it was (a phase
        # that finished just before the cancel is fine; one started after it is not).
        started = {e.phase for e in events if e.type == enums.EVENT_TYPE_PHASE_STARTED}
        assert {p for s, p, _ in read_calls(calls) if s == victim} <= started
    finally:
        a.stop()
        b.stop()
        await _close(channels)

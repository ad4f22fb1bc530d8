"""The typed Python clients, async and sync, against the real service: the same API, retries on UNAVAILABLE by a
deadline against a server that starts late, and a watch that resumes after its connection drops or its server
restarts."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.app import App
from service.client import OrchestratorClient, SyncOrchestratorClient
from service.gen.orchestrator.v1 import enums_pb2 as enums
from tests.clients.tcp import CuttableProxy, reserved_port
from tests.conftest import make_settings
from tests.runners import ScriptedRunner

pytestmark = pytest.mark.timeout(60)
DESIGN_PHASES = ["requirements", "design"]
# The clients used to give up after 5 retries from 0.1 s (about 3 s), less than a graceful restart takes.
OLD_RETRY_BUDGET = 5


def stored(events: list[Any]) -> list[Any]:
    return [e for e in events if e.type != enums.EVENT_TYPE_HEARTBEAT]


def assert_complete_history(events: list[Any]) -> None:
    """Every stored event exactly once, in order, ending with the terminal one."""
    sequences = [e.sequence for e in stored(events)]
    assert sequences == list(range(1, len(sequences) + 1)), sequences
    assert stored(events)[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED


class RetryLog(logging.Handler):
    """Collects the clients' retry messages; `first` is set at the first one, so a test can wait for it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.first.set()


@pytest.fixture
def retry_log() -> Iterator[RetryLog]:
    handler, logger = RetryLog(), logging.getLogger("service.client")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
async def proxy(app: App) -> AsyncIterator[CuttableProxy]:
    async with CuttableProxy(app.grpc_port) as cuttable:
        yield cuttable


def test_sync_client_has_the_async_clients_api() -> None:
    def api(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(member).parameters)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    assert api(SyncOrchestratorClient) == api(OrchestratorClient)
    assert set(api(OrchestratorClient)) == {"close", "submit", "status", "cancel", "list", "types", "health", "watch"}


async def test_async_client_runs_a_workflow_end_to_end(app: App) -> None:
    async with OrchestratorClient(f"127.0.0.1:{app.grpc_port}") as client:
        submitted = await client.submit("a CLI", "design", configuration={"language": "python"}, priority="high")
        assert submitted.created
        events = [event async for event in client.watch(submitted.session_id)]
        assert_complete_history(events)
        status = await client.status(submitted.session_id)
        assert status.state == enums.WORKFLOW_STATE_COMPLETED
        assert list(status.phases_completed) == DESIGN_PHASES
        assert status.priority == enums.PRIORITY_HIGH
        assert status.request_id  # generated, so that the submit's own retries were safe
        listed = await client.list(state=enums.WORKFLOW_STATE_COMPLETED, workflow_type="design")
        assert [w.session_id for w in listed.workflows] == [submitted.session_id]
        assert "design" in {t.name for t in (await client.types()).workflow_types}
        assert (await client.health()).replica_id == "test-replica"
        later = [event async for event in client.watch(submitted.session_id, after_sequence=events[-1].sequence - 1)]
        assert [e.sequence for e in stored(later)] == [events[-1].sequence]


async def test_sync_client_runs_a_workflow_end_to_end(app: App) -> None:
    def scenario() -> None:
        with SyncOrchestratorClient(f"127.0.0.1:{app.grpc_port}") as client:
            submitted = client.submit("a CLI", "design", request_id="sync-key-1")
            again = client.submit("a CLI", "design", request_id="sync-key-1")
            assert (again.session_id, again.created) == (submitted.session_id, False)
            events = list(client.watch(submitted.session_id))
            assert_complete_history(events)
            status = client.status(submitted.session_id)
            assert status.state == enums.WORKFLOW_STATE_COMPLETED
            assert list(status.phases_completed) == DESIGN_PHASES
            assert [w.session_id for w in client.list(workflow_type="design").workflows] == [submitted.session_id]
            assert "design" in {t.name for t in client.types().workflow_types}
            assert client.health().replica_id == "test-replica"
            with pytest.raises(grpc.RpcError) as failed:
                client.cancel(submitted.session_id)
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    await asyncio.wait_for(asyncio.to_thread(scenario), 30)


async def test_errors_other_than_unavailable_are_not_retried(app: App, retry_log: RetryLog) -> None:
    async with OrchestratorClient(f"127.0.0.1:{app.grpc_port}") as client:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.status("00000000-0000-0000-0000-000000000000")
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.submit("r", "no-such-type")
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert retry_log.messages == []


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_calls_retry_unavailable_until_a_late_server_starts(
    tmp_path: Path, runner: ScriptedRunner, retry_log: RetryLog, flavour: str
) -> None:
    with reserved_port() as port:
        target = f"127.0.0.1:{port}"  # the default retry timeout (minutes)
        if flavour == "async":
            client: Any = OrchestratorClient(target)
            call = asyncio.ensure_future(client.submit("late", "design", request_id="late-1"))
        else:
            client = SyncOrchestratorClient(target)
            call = asyncio.ensure_future(asyncio.to_thread(client.submit, "late", "design", request_id="late-1"))
        try:
            # The server starts only once the client has been refused more often than the old clients allowed.
            deadline = time.monotonic() + 30
            while len(retry_log.messages) <= OLD_RETRY_BUDGET:
                assert time.monotonic() < deadline, retry_log.messages
                assert not call.done(), call
                await asyncio.sleep(0.05)
            assert not call.done()
            app = App(make_settings(tmp_path / "data", grpc_port=port), runner=runner)
            await app.start()
            try:
                submitted = await asyncio.wait_for(call, 30)
                assert submitted.created
                assert "UNAVAILABLE" in retry_log.messages[0]
                # Exponential from 0.1 s, each with jitter (0.5x to 1.5x): clients of a restarted server spread out.
                delays = [float(re.search(r" in ([0-9.]+)s", m)[1]) for m in retry_log.messages]  # type: ignore[index]
                for attempt, delay in enumerate(delays):
                    nominal = min(0.1 * 2**attempt, 5.0)
                    assert 0.5 * nominal - 0.01 <= delay <= 1.5 * nominal + 0.01, (attempt, delays)
                assert len({round(d / min(0.1 * 2**i, 5.0), 2) for i, d in enumerate(delays)}) > 1, delays
            finally:
                await app.stop(grace=0.5)
        finally:
            call.cancel()
            result = client.close()
            if inspect.isawaitable(result):
                await result


async def test_async_watch_resumes_after_the_connection_is_cut(
    app: App, runner: ScriptedRunner, proxy: CuttableProxy, retry_log: RetryLog
) -> None:
    gate = runner.gate("design")
    events = []
    async with OrchestratorClient(f"127.0.0.1:{proxy.port}") as client:
        submitted = await client.submit("cut me", "design")
        async for event in client.watch(submitted.session_id):
            events.append(event)
            if event.type == enums.EVENT_TYPE_PHASE_STARTED and event.phase == "design":
                await proxy.cut()  # the stream dies here; what happens next is written while it reconnects
                gate.set()
    assert_complete_history(events)
    assert proxy.connections >= 2
    assert any("WatchWorkflow" in message for message in retry_log.messages)


async def test_sync_watch_resumes_after_the_connection_is_cut(
    app: App, runner: ScriptedRunner, proxy: CuttableProxy, retry_log: RetryLog
) -> None:
    gate = runner.gate("design")
    loop = asyncio.get_running_loop()

    def scenario() -> list[Any]:
        events = []
        with SyncOrchestratorClient(f"127.0.0.1:{proxy.port}") as client:
            submitted = client.submit("cut me", "design")
            for event in client.watch(submitted.session_id):
                events.append(event)
                if event.type == enums.EVENT_TYPE_PHASE_STARTED and event.phase == "design":
                    asyncio.run_coroutine_threadsafe(proxy.cut(), loop).result(10)
                    loop.call_soon_threadsafe(gate.set)
        return events

    events = await asyncio.wait_for(asyncio.to_thread(scenario), 40)
    assert_complete_history(events)
    assert proxy.connections >= 2
    assert any("WatchWorkflow" in message for message in retry_log.messages)


@pytest.mark.slow
async def test_watch_resumes_across_a_server_restart_on_the_same_data(tmp_path: Path, retry_log: RetryLog) -> None:
    """The real thing: the server goes away mid-watch, a new one starts on the same data directory and port,
    recovers the workflow and finishes it; the watcher sees every event once."""
    first_runner = ScriptedRunner()
    first_runner.gate("design")  # never released: the first server stops in the middle of this phase
    first = App(make_settings(tmp_path / "data"), runner=first_runner)
    await first.start()
    port = first.grpc_port
    running: list[App] = [first]
    events: list[Any] = []
    restarted = asyncio.Event()
    try:
        async with OrchestratorClient(f"127.0.0.1:{port}", retry_timeout=30) as client:
            submitted = await client.submit("restart me", "design")

            async def watcher() -> None:
                async for event in client.watch(submitted.session_id):
                    events.append(event)
                    if event.type == enums.EVENT_TYPE_PHASE_STARTED and event.phase == "design":
                        restarted.set()

            watching = asyncio.create_task(watcher())
            await asyncio.wait_for(restarted.wait(), 20)
            await running.pop().stop(grace=0)
            second = App(make_settings(tmp_path / "data", grpc_port=port), runner=ScriptedRunner())
            await second.start()
            running.append(second)
            await asyncio.wait_for(watching, 40)
    finally:
        for app in running:
            await app.stop(grace=0.5)
    assert_complete_history(events)
    phases = [e.phase for e in stored(events) if e.type == enums.EVENT_TYPE_PHASE_COMPLETED]
    assert phases == DESIGN_PHASES
    assert any("WatchWorkflow" in message for message in retry_log.messages)

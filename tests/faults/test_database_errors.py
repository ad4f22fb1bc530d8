"""The database refusing writes (another process holds SQLite's write lock) under the real service behind the real
Envoy: calls fail with UNAVAILABLE and a retry delay (REST: 503 with Retry-After), never INTERNAL; grpc.health.v1
and REST /health say NOT_SERVING (503, the report in the body) while it lasts, so readiness probes take the
replica out, while "liveness" stays SERVING; a client waiting by its deadline gets its workflow once it is over."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app import App
from service.client import OrchestratorClient
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.clients.test_python_clients import RetryLog
from tests.conftest import make_settings
from tests.faults.processes import SqliteWriteLock
from tests.runners import ScriptedRunner

pytestmark = [pytest.mark.faults, pytest.mark.envoy, pytest.mark.timeout(90)]

# A write waits this long for the lock, then fails: the default (30 s) would make every step here take 30 s.
BUSY_SECONDS = 1.0
HEALTH_SECONDS = 20.0  # the service follows its health every 2 s; probes every 5 s


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    """The Python client's retry log lines."""
    handler, logger = RetryLog(), logging.getLogger("service.client")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[App]:
    settings = make_settings(tmp_path / "data", envoy=True, sqlite_busy_timeout_seconds=BUSY_SECONDS)
    app = App(settings, runner=ScriptedRunner())
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0.5)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.1)


def details(error: grpc.aio.AioRpcError) -> tuple[str, float]:
    """The ErrorInfo reason and the RetryInfo delay (seconds) of an error, from its google.rpc.Status."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), f"no google.rpc.Status details: {error}"
    reason, delay = "", -1.0
    for detail in status_pb2.Status.FromString(raw).details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


async def test_a_locked_database_is_unavailable_with_a_retry_delay_and_takes_the_replica_out(
    service: App, retries: RetryLog
) -> None:
    request = pb.ExecuteWorkflowRequest(requirements="r", workflow_type="design")
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30) as rest,
    ):
        stub = pb_grpc.OrchestratorServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def probe(name: str) -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status

        assert (await rest.get("/health")).status_code == 200
        assert await probe("") == health_pb2.HealthCheckResponse.SERVING

        with SqliteWriteLock(service.settings.data_dir / "orchestrator.sqlite") as lock:
            # gRPC: UNAVAILABLE with a reason and a delay, the text naming no file; it was INTERNAL.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ExecuteWorkflow(request)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            reason, delay = details(refused.value)
            assert reason == "DATABASE_UNAVAILABLE"
            assert delay >= 1.0
            assert "sqlite" not in refused.value.details().lower()
            assert str(service.settings.data_dir) not in refused.value.details()

            # REST through Envoy: 503, Retry-After from the RetryInfo, the guide's error body.
            answer = await rest.post("/execute-workflow", json={"requirements": "r", "workflow_type": "design"})
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) >= 1
            body = answer.json()
            assert body["error"] == "DATABASE_UNAVAILABLE"
            assert body["details"]["retry_after_seconds"] >= 1.0

            # Health: the replica leaves readiness ("" and REST /health), never liveness.
            await until(
                lambda: _is(probe(""), health_pb2.HealthCheckResponse.NOT_SERVING), HEALTH_SECONDS, "NOT_SERVING"
            )
            assert await probe("orchestrator.v1.OrchestratorService") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await probe("liveness") == health_pb2.HealthCheckResponse.SERVING
            unhealthy = await rest.get("/health")
            assert unhealthy.status_code == 503
            report = unhealthy.json()
            assert report["status"] == "not_serving"  # the HealthResponse itself, in the REST face's words
            database = {d["name"]: d for d in report["dependencies"]}["database"]
            assert database["status"] == "not_serving"
            assert unhealthy.headers["cache-control"] == "no-store"

            # A client retrying by its deadline waits the outage out: the lock goes once it has been refused.
            async with OrchestratorClient(f"127.0.0.1:{service.grpc_port}", retry_timeout=60) as client:
                submit = asyncio.create_task(client.submit("after the outage", "design", request_id="wait-1"))
                assert await asyncio.to_thread(retries.first.wait, 30)
                assert "DATABASE_UNAVAILABLE" in retries.messages[0]
                lock.release()
                submitted = await asyncio.wait_for(submit, 60)
                assert submitted.created
                events = []
                async for event in client.watch(submitted.session_id):
                    events.append(event)
                stored = [e.sequence for e in events if e.type != enums.EVENT_TYPE_HEARTBEAT]
                assert stored == list(range(1, len(stored) + 1))
                assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
                # Completed 1; failed, stuck, lost 0. Duplicated 0: the refused calls stored nothing, and the
                # client's retries (one request_id) made one session. Re-run 0: each phase ran once.
                listed = await client.list()
                assert [w.session_id for w in listed.workflows] == [submitted.session_id]
                runner = service.runner
                assert isinstance(runner, ScriptedRunner)
                assert sorted(runner.counts.values()) == [1, 1]

        # Back in: health and REST /health follow.
        await until(lambda: _is(probe(""), health_pb2.HealthCheckResponse.SERVING), HEALTH_SECONDS, "SERVING again")
        healthy = await rest.get("/health")
        assert healthy.status_code == 200
        assert healthy.json()["status"] in ("serving", "degraded")


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected

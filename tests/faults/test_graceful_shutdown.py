"""SIGTERM to a real `orchestrator serve` (Envoy included) while clients watch running workflows: every stream
says in-band that the shutdown ended it (gRPC: UNAVAILABLE with a RetryInfo and the reason SERVER_SHUTTING_DOWN;
NDJSON: a last line of type `reconnect`; SSE: `event: reconnect`; WebSocket: that message, then close 1012),
never a clean end that looks like a finished stream. The Python client waits out the restart by its deadline,
well past the old 5 retries, and finishes every watch on a new process on the same data directory and ports:
all completed, none failed, stuck, lost or duplicated; only the model calls the shutdown cut ran again."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from service.client import TERMINAL, OrchestratorClient
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.agents.fake_openai import ANALYST_OUTPUT, FakeOpenAI, Reply, completion
from tests.clients.test_python_clients import RetryLog
from tests.faults.processes import ServeProcess, free_port

pytestmark = [pytest.mark.faults, pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(120)]

# The old clients gave up after 5 retries (about 3 s): the new process starts only after more refusals than that.
OLD_CLIENT_RETRIES = 5
WORKFLOWS = 5  # each watched by the Python client; the first also over raw gRPC, NDJSON, SSE and WebSocket
OUTCOMES = {enums.WORKFLOW_STATE_COMPLETED: "completed", enums.WORKFLOW_STATE_FAILED: "failed"}


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    handler, logger = RetryLog(), logging.getLogger("service.client")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Model(FakeOpenAI):
    """The analyst's model: calls hang while `holding` is set (the phases are running when SIGTERM arrives), then
    answer. A real HTTP server: the one fake these tests allow, for a paid model API."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.holding.set()
        super().__init__(
            lambda request: Reply(hold=True) if self.holding.is_set() else completion(request, ANALYST_OUTPUT)
        )


@pytest.fixture
def model() -> Iterator[Model]:
    with Model() as fake:
        yield fake


def serve(tmp: Path, model: Model, grpc_port: int, http_port: int) -> ServeProcess:
    env = {
        "ORCHESTRATOR_AUTH__ENABLED": "false",
        "ORCHESTRATOR_LOG_FORMAT": "json",
        "ORCHESTRATOR_REPLICA_ID": "graceful-1",  # the same identity after the restart: it resumes its own work
        "ORCHESTRATOR_AGENTS__ROLE_MODELS": json.dumps({"analyst": "openai:fake-model"}),
        "ORCHESTRATOR_AGENTS__OPENAI_BASE_URL": model.base_url,
        "ORCHESTRATOR_AGENTS__OPENAI_API_KEY": "test-key",
        "ORCHESTRATOR_AGENTS__MAX_RETRIES": "0",
        # One client, one address: the per-tenant limits would otherwise cap a larger run of this test.
        "ORCHESTRATOR_WRITE_BURST": "10000",
        "ORCHESTRATOR_READ_BURST": "10000",
        "ORCHESTRATOR_MAX_WATCH_STREAMS_PER_TENANT": "10000",
        "ORCHESTRATOR_MAX_RUNNING_WORKFLOWS": "1000",  # every workflow's phase in flight when SIGTERM arrives
        "ORCHESTRATOR_AGENTS__PROVIDER_CONCURRENCY": "1000",
    }
    flags = [
        "--grpc-port", str(grpc_port),
        "--http-port", str(http_port),
        "--metrics-port", "0",
        "--envoy-admin-port", "0",
        "--queue-poll-seconds", "0.05",
        "--watch-heartbeat-seconds", "1",
        "--log-level", "INFO",
    ]  # fmt: skip
    return ServeProcess(tmp / "data", tmp / "serve.log", env=env, flags=flags)


def shutdown_details(error: grpc.aio.AioRpcError) -> tuple[str, float]:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), f"the stream ended without google.rpc.Status details: {error}"
    reason, delay = "", -1.0
    for detail in status_pb2.Status.FromString(raw).details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


async def grpc_stream(stub: pb_grpc.OrchestratorServiceStub, session_id: str) -> grpc.aio.AioRpcError | None:
    """A raw WatchWorkflow (no client library): how it ends. None means a clean end."""
    try:
        async for _ in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id)):
            pass
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def ndjson(rest: httpx.AsyncClient, session_id: str, ready: asyncio.Event) -> list[dict[str, Any]]:
    lines = []
    async with rest.stream("GET", f"/workflow-events/{session_id}") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                lines.append(json.loads(line))
                ready.set()
    return lines


async def sse(rest: httpx.AsyncClient, session_id: str, ready: asyncio.Event) -> str:
    text = ""
    async with rest.stream("GET", f"/workflow-events/{session_id}", headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_text():
            text += chunk
            ready.set()
    return text


async def websocket(http_port: int, session_id: str, ready: asyncio.Event) -> tuple[list[str], int | None]:
    messages = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{http_port}/ws/{session_id}?after_sequence=0") as ws,
    ):
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                messages.append(message.data)
                ready.set()
        return messages, ws.close_code


async def test_sigterm_ends_every_watch_in_band_and_clients_resume_on_the_restarted_server(
    tmp_path: Path, model: Model, retries: RetryLog
) -> None:
    grpc_port, http_port = free_port(), free_port()
    first = serve(tmp_path, model, grpc_port, http_port).start()
    second: ServeProcess | None = None
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as rest,
            OrchestratorClient(f"127.0.0.1:{grpc_port}") as client,  # the default retry timeout
        ):
            stub = pb_grpc.OrchestratorServiceStub(channel)
            ids = [(await client.submit(f"a todo list {i}", "design")).session_id for i in range(WORKFLOWS)]
            session_id = ids[0]
            await _until(lambda: model.chat_requests >= WORKFLOWS, 30, "every analyst's model call started")

            watched: dict[str, list[Any]] = {s: [] for s in ids}

            async def follow(one: str) -> None:
                async for event in client.watch(one):
                    watched[one].append(event)

            started = [asyncio.Event() for _ in range(3)]
            streams = [
                asyncio.create_task(grpc_stream(stub, session_id)),
                asyncio.create_task(ndjson(rest, session_id, started[0])),
                asyncio.create_task(sse(rest, session_id, started[1])),
                asyncio.create_task(websocket(http_port, session_id, started[2])),
            ]
            watching = asyncio.gather(*(follow(one) for one in ids))
            for event in started:
                await asyncio.wait_for(event.wait(), 20)
            # queued, started, phase started: each watch is following its workflow live
            await _until(lambda: all(len(w) >= 3 for w in watched.values()), 20, "every client watch's first events")

            assert await asyncio.to_thread(first.terminate) == 0, first.tail()
            model.holding.clear()  # the restarted replica's model answers
            grpc_end, ndjson_lines, sse_text, (ws_messages, ws_code) = await asyncio.wait_for(
                asyncio.gather(*streams), 30
            )

            # gRPC: UNAVAILABLE with the reason and a retry delay, not "Cancelling all calls".
            assert grpc_end is not None and grpc_end.code() == grpc.StatusCode.UNAVAILABLE
            reason, delay = shutdown_details(grpc_end)
            assert (reason, delay > 0) == ("SERVER_SHUTTING_DOWN", True), grpc_end
            last_sent = max(int(e["sequence"]) for e in ndjson_lines if e["type"] != "reconnect")
            # NDJSON: the last line says reconnect, why, and after which sequence.
            end = ndjson_lines[-1]
            assert end["type"] == "reconnect" and end["error"] == "SERVER_SHUTTING_DOWN", ndjson_lines[-2:]
            assert end["after_sequence"] == last_sent
            assert end["details"]["retry_after_seconds"] > 0
            # SSE: a named reconnect event with the EventSource's retry delay.
            frames = [frame for frame in sse_text.split("\n\n") if frame.strip()]
            assert frames[-1].startswith("event: reconnect\nretry: "), frames[-1]
            assert json.loads(frames[-1].split("data: ", 1)[1])["error"] == "SERVER_SHUTTING_DOWN"
            # WebSocket: the same last message, then 1012 Service Restart.
            assert json.loads(ws_messages[-1])["type"] == "reconnect"
            assert ws_code == 1012

            # Every watch keeps retrying past the old clients' budget; then the replica comes back.
            def retried(one: str) -> int:
                return sum(f"WatchWorkflow {one}:" in message for message in retries.messages)

            await _until(lambda: min(map(retried, ids)) > OLD_CLIENT_RETRIES, 60, "retries while the server is down")
            assert not watching.done(), watching
            shut_down = [m for m in retries.messages if "SERVER_SHUTTING_DOWN" in m]
            assert len(shut_down) == WORKFLOWS, retries.messages  # every watch was told, in-band
            second = serve(tmp_path, model, grpc_port, http_port).start()
            await asyncio.wait_for(watching, 60)
            final = {one: await _state(client, one) for one in ids}

        counts = {"completed": 0, "failed": 0, "stuck": 0, "lost": 0, "duplicated": 0}
        for one, events in watched.items():
            stored = [e for e in events if e.type != enums.EVENT_TYPE_HEARTBEAT]
            if [e.sequence for e in stored] != list(range(1, len(stored) + 1)) or sum(
                e.type in TERMINAL for e in stored
            ) != 1:
                counts["duplicated"] += 1  # a gap, a repeat, or not exactly one terminal event
            counts["lost" if final[one] is None else OUTCOMES.get(final[one], "stuck")] += 1
        assert counts == {"completed": WORKFLOWS, "failed": 0, "stuck": 0, "lost": 0, "duplicated": 0}, counts
        # Re-run: only the model calls the shutdown cut (one per workflow, never answered) ran again.
        assert model.chat_requests == 2 * WORKFLOWS
    finally:
        for process in (first, second):
            if process is not None and process.process is not None and process.process.poll() is None:
                try:
                    process.terminate(30)
                except Exception:
                    process.kill()


async def _until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def _state(client: OrchestratorClient, session_id: str) -> int | None:
    """The workflow's state, or None when the service does not know it (lost)."""
    try:
        return int((await client.status(session_id)).state)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise

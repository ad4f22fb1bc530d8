"""Hostile input, second round (issue 12): each attack from the outside review, against the real service through
the real Envoy where the path goes through it."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from gateway.config import SECURITY_HEADERS
from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.service.test_grpc_api import watch_all

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]


@pytest.fixture
async def offline_app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data", envoy=True))  # the real offline model and sandbox
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


def token_of(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "page_token",
    [token_of([10**400, "x"]), token_of([float("inf"), "x"]).replace("Infinity", "1e999"), token_of("x"), "!!!"],
    ids=["huge integer", "infinite float", "not a pair", "not base64"],
)
async def test_a_crafted_page_token_is_invalid_argument_never_internal(offline_app: App, page_token: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{offline_app.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.OrchestratorServiceStub(channel).ListWorkflows(pb.ListWorkflowsRequest(page_token=page_token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "page_token" in (caught.value.details() or "")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{offline_app.http_port}", timeout=20) as http:
        response = await http.get("/workflows", params={"page_token": page_token})
    assert response.status_code == 400, response.text
    assert [v["field"] for v in response.json()["details"]["field_violations"]] == ["page_token"]


async def test_a_review_of_code_the_parser_cannot_build_completes_with_a_finding(offline_app: App) -> None:
    configuration = struct_pb2.Struct()
    # CPython's parser gives up on this with MemoryError (RecursionError for shallower nesting).
    code = {"deep.py": "x = " + "-" * 20_000 + "1\n", "shallow.py": "y = " + "-" * 3000 + "1\n"}
    configuration.update({"code": code})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{offline_app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        submitted = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(requirements="review it", workflow_type="review", configuration=configuration)
        )
        events = await watch_all(stub, submitted.session_id)
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=submitted.session_id))
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED, events[-1]
    findings = {f.path: f for f in status.result.review.findings if "cannot build" in f.message}
    assert set(findings) == {"deep.py", "shallow.py"}
    assert all(f.severity == "critical" for f in findings.values())


async def test_a_token_in_the_query_string_never_lands_in_envoys_log(tmp_path: Path) -> None:
    secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ"
    application = App(make_settings(tmp_path / "data", envoy=True))
    await application.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}", timeout=20) as http:
            for path in ("/workflow-types", "/no-such-path", "/workflows"):
                await http.get(path, params={"access_token": secret, "token": secret})
        log_path = application._envoy.log_path  # type: ignore[union-attr]
    finally:
        await application.stop(grace=0.5)  # Envoy flushes its access log as it exits
    logged = log_path.read_text(errors="replace")
    assert '"path":"/no-such-path"' in logged.replace(" ", "")  # the requests were logged, without their queries
    assert secret not in logged and "c2VjcmV0" not in logged


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE / HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
        (b"GET /health HTTP/1.0\r\n\r\n", 426),
        (b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    ],
    ids=["malformed", "HTTP/1.0", "header too large", "smuggling"],
)
async def test_envoys_codec_replies_are_json_with_the_security_headers(
    offline_app: App, raw: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", offline_app.http_port), timeout=10) as connection:
        connection.sendall(raw)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].split(" ")[1] == str(status), lines[0]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, headers)
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]


def _length(reply: bytes) -> int:
    head = reply.partition(b"\r\n\r\n")[0].decode(errors="replace").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0


async def test_an_upload_that_trickles_forever_is_cut_with_a_408(tmp_path: Path) -> None:
    application = App(make_settings(tmp_path / "data", envoy=True, request_timeout_seconds=2.0))
    await application.start()
    try:
        started = asyncio.get_running_loop().time()
        reader, writer = await asyncio.open_connection("127.0.0.1", application.http_port)
        writer.write(
            b"POST /execute-workflow HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{"
        )
        await writer.drain()

        async def trickle() -> None:
            while True:  # a byte a second, forever: never idle, never done
                await asyncio.sleep(0.5)
                writer.write(b" ")
                await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        finally:
            dripping.cancel()
            writer.close()
        assert head.split(b" ")[1] == b"408", head
        assert b"content-type: application/json" in head.lower()
        assert asyncio.get_running_loop().time() - started < 15
        # A WebSocket is not a slow request: once upgraded it outlives the timeout.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}", timeout=20) as http:
            submitted = await http.post("/execute-workflow", json={"requirements": "r", "workflow_type": "design"})
        session = submitted.json()["session_id"]
        url = f"ws://127.0.0.1:{application.http_port}/ws/{session}"
        async with aiohttp.ClientSession() as client, client.ws_connect(url) as ws:
            await asyncio.sleep(3.0)  # past the 2 s request timeout
            await ws.send_str("ping")
            texts = []
            while "pong" not in texts:  # the session's live events may come first
                message = await asyncio.wait_for(ws.receive(), 10)
                assert message.type is aiohttp.WSMsgType.TEXT, message
                texts.append(message.data)
    finally:
        await application.stop(grace=0.5)


async def test_unauthenticated_health_watch_streams_are_capped(tmp_path: Path) -> None:
    from google.rpc import error_details_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_status import rpc_status

    application = App(make_settings(tmp_path / "data", max_health_watch_streams=3))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            open_streams = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(3)]
            for call in open_streams:
                assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
            refused = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await refused.read()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(caught.value)
            assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
            # Check is never capped, and closing a stream frees its place.
            assert (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status == 1
            open_streams.pop().cancel()
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                again = stub.Watch(health_pb2.HealthCheckRequest(service=""))
                try:
                    assert (await again.read()).status == health_pb2.HealthCheckResponse.SERVING
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert asyncio.get_running_loop().time() < deadline, "the cancelled stream kept its place"
                    await asyncio.sleep(0.05)
            again.cancel()
            for call in open_streams:
                call.cancel()
    finally:
        await application.stop(grace=0.5)

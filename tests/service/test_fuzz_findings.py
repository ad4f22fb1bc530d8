"""What the fuzz tests found, pinned as plain regression tests (each was an UNKNOWN/INTERNAL, a leaked Python
exception text through Envoy as a 500, or a watch that never ended)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from google.protobuf.internal import encoder
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_auth import AUDIENCE, ISSUER, SECRET, error_details
from tests.service.test_grpc_api import watch_all

pytestmark = pytest.mark.timeout(60)

EXECUTE = "/orchestrator.v1.OrchestratorService/ExecuteWorkflow"


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


def length_delimited(field: int, payload: bytes) -> bytes:
    return encoder._VarintBytes((field << 3) | 2) + encoder._VarintBytes(len(payload)) + payload  # type: ignore[attr-defined]


def deep_execute_request(levels: int) -> bytes:
    """An ExecuteWorkflowRequest whose configuration nests `levels` Structs: built as bytes, since the Python
    protobuf runtime itself refuses to build one past its depth limit."""
    struct = b""
    for _ in range(levels):
        struct = length_delimited(1, length_delimited(1, b"a") + length_delimited(2, length_delimited(5, struct)))
    return length_delimited(1, b"r") + length_delimited(2, b"full") + length_delimited(3, struct)


def nested_json(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


async def invalid(coroutine: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coroutine
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert "Unexpected" not in (error.details() or "") and "class" not in (error.details() or "")
    assert error_details(error)["RequestInfo"].request_id
    return error


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_non_finite_numbers_in_the_configuration_are_invalid_argument(
    stub: pb_grpc.OrchestratorServiceStub, number: float
) -> None:
    configuration = struct_pb2.Struct()
    configuration.update({"models": {"engineer": "offline"}, "budget_usd": 1.0})
    configuration.fields["skip_phases"].list_value.values.add().struct_value.fields["x"].number_value = number
    request = pb.ExecuteWorkflowRequest(requirements="r", workflow_type="full", configuration=configuration)
    error = await invalid(stub.ExecuteWorkflow(request))
    assert "finite" in violations(error)["configuration.skip_phases[0].x"]


@pytest.mark.parametrize(
    "raw", [b"\xff\xff\xff", b"\x0a\x05abc", deep_execute_request(60)], ids=["garbage", "cut", "deep"]
)
async def test_undecodable_requests_are_invalid_argument_not_unknown(channel: grpc.aio.Channel, raw: bytes) -> None:
    call = channel.unary_unary(EXECUTE, request_serializer=bytes, response_deserializer=bytes)
    error = await invalid(call(raw))
    assert "could not be decoded" in (error.details() or "")


async def test_a_deep_but_decodable_configuration_is_refused_by_its_own_limit(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(EXECUTE, request_serializer=bytes, response_deserializer=bytes)
    error = await invalid(call(deep_execute_request(30)))
    assert "nests deeper than 8 levels" in (error.details() or "")


async def test_watch_past_the_last_event_is_refused_and_at_the_end_ends_at_once(
    stub: pb_grpc.OrchestratorServiceStub,
) -> None:
    submitted = await stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(requirements="r", workflow_type="design"))
    events = await watch_all(stub, submitted.session_id)
    last = events[-1].sequence
    assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
    # At the end of an ended workflow: nothing more, and the stream ends (it used to wait forever).
    assert await watch_all(stub, submitted.session_id, after=last) == []
    error = await invalid(watch_all(stub, submitted.session_id, after=last + 1))
    assert "after_sequence" in violations(error)


async def test_auth_comes_before_decoding(tmp_path: Path, runner: ScriptedRunner) -> None:
    auth = {"enabled": True, "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}
    application = App(make_settings(tmp_path / "data", auth=auth), runner=runner)
    await application.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}") as channel:
            call = channel.unary_unary(EXECUTE, request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"\xff\xff\xff")
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await application.stop(grace=0.5)


@pytest.fixture
async def rest(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[httpx.AsyncClient]:
    application = App(make_settings(tmp_path / "data", envoy=True), runner=runner)
    await application.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}", timeout=20) as http:
            yield http
    finally:
        await application.stop(grace=0.5)


@pytest.mark.envoy
async def test_over_rest_these_are_400_json_never_a_500_with_python_text(rest: httpx.AsyncClient) -> None:
    replies = [
        # 50 JSON levels pass Envoy's own depth check but not protobuf's in the service.
        await rest.post(
            "/execute-workflow", json={"requirements": "r", "workflow_type": "full", "configuration": nested_json(50)}
        ),
        # Envoy passes a path's invalid UTF-8 into a proto string, which the service cannot decode.
        await rest.get("/workflow-status/%ff"),
        await rest.post("/cancel-workflow/%c3", json={}),
    ]
    for response in replies:
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == "INVALID_ARGUMENT" and "could not be decoded" in body["detail"]
        assert "Unexpected" not in response.text and "DecodeError" not in response.text
    # The watch is the live endpoint's (no protobuf decoding on the way): the id is simply not a session id.
    watch = await rest.get("/workflow-events/%ff%fe")
    assert watch.status_code == 400 and watch.json()["error"] == "INVALID_ARGUMENT", watch.text
    assert "session_id" in watch.json()["detail"]
    submitted = (await rest.post("/execute-workflow", json={"requirements": "r", "workflow_type": "design"})).json()
    lines = (await rest.get(f"/workflow-events/{submitted['session_id']}")).text.splitlines()
    last = len([line for line in lines if json.loads(line)["type"] != "heartbeat"])
    ended = await rest.get(f"/workflow-events/{submitted['session_id']}", params={"after_sequence": last})
    assert ended.status_code == 200 and ended.text.strip() in ("", "[]")
    past = await rest.get(f"/workflow-events/{submitted['session_id']}", params={"after_sequence": last + 1})
    assert past.status_code == 400 and past.json()["error"] == "INVALID_ARGUMENT"

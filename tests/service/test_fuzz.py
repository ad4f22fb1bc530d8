"""Fuzzing the real service: schemathesis drives the REST API through a real Envoy from docs/openapi.json, and
hypothesis sends generated requests over native gRPC. No answer may be a 5xx or INTERNAL/UNKNOWN, the server
must still answer Health afterwards, and its databases must pass their integrity checks.

Auth is ON, with a valid token on every generated request: the production path, so the fuzz reaches the
validation, the engine and the stores behind the gatekeeper (with auth off it would skip the token parsing; with
no token every request would stop at the gatekeeper). The gatekeeper itself gets its own fuzz: random
authorization values must be UNAUTHENTICATED, never an error.

Bounded for CI (under half a minute on 2 cores): max_examples per operation, a per-example deadline, no example
database. A failure prints the example and a blob to reproduce it with @hypothesis.reproduce_failure.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import hypothesis
import pytest
import schemathesis
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.server_thread import ServerThread
from tests.service.test_auth import AUDIENCE, ISSUER, SECRET, hs256

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "docs" / "openapi.json"

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.envoy,
    pytest.mark.timeout(300),
    # The server's own threads use `random` (DBOS, retries with jitter) while hypothesis draws, which it would
    # take for a strategy using the global random.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

# Per operation. REST calls go through Envoy and the service; gRPC ones straight to the service.
REST_EXAMPLES = 200
GRPC_EXAMPLES = 200
FUZZ_SETTINGS = hypothesis.settings(
    deadline=5000,  # ms per example: a slow example is reported, not waited for forever
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
REST_SETTINGS = hypothesis.settings(FUZZ_SETTINGS, max_examples=REST_EXAMPLES)
GRPC_SETTINGS = hypothesis.settings(FUZZ_SETTINGS, max_examples=GRPC_EXAMPLES)

# What a fuzzed request may get back; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, ...) is a bug.
EXPECTED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz") / "data",
        envoy=True,
        auth={"enabled": True, "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE},
        max_active_workflows_per_tenant=1_000_000,
    )
    with ServerThread(settings) as running:
        yield running
    # After the server stopped: both SQLite files (ours and DBOS's) are sound.
    for name in ("orchestrator.sqlite", "dbos.sqlite"):
        with sqlite3.connect(settings.data_dir / name) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], name


@pytest.fixture(scope="module")
def token() -> str:
    # Valid for the whole module; the fuzz runs well within it.
    return hs256(tenant="fuzzer", exp=2_000_000_000)


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.app.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.OrchestratorServiceStub:
    return pb_grpc.OrchestratorServiceStub(channel)


# REST through Envoy, driven by the OpenAPI document -----------------------------------------------------------

# The /api/v1 paths are the same methods' additional bindings (the same transcoding and handler); fuzzing the
# documented paths once keeps the run bounded.
schema = schemathesis.openapi.from_path(OPENAPI).exclude(path_regex=r"^/api/v1/")
# Not `positive_data_acceptance` or `unsupported_method`: the document does not carry the service's own bounds
# (page_size 0..1000, the session id alphabet), so schema-valid requests it refuses with 400 are not bugs; and
# Envoy's transcoder answers an undeclared method with 404, not 405.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@schema.parametrize()
@REST_SETTINGS
def test_rest_api_never_answers_5xx(case: schemathesis.Case, server: ServerThread, token: str) -> None:
    response = case.call(
        base_url=f"http://127.0.0.1:{server.app.http_port}",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    # Every answer is JSON (a stream of JSON lines for a watch), never Envoy's or Python's plain text.
    assert response.headers.get("content-type", [""])[0].startswith("application/"), response.headers
    case.validate_response(response, checks=CHECKS)


# Native gRPC --------------------------------------------------------------------------------------------------

# Text protobuf can carry: any Unicode scalar value (lone surrogates cannot be encoded as UTF-8).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
WORKFLOW_TYPES = st.sampled_from(["full", "design", "implement", "review", "bugfix"])

# JSON-ish values a Struct can hold, NaN and infinities included (number_value is a double).
SCALARS = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
KNOWN_KEYS = st.sampled_from(
    ["language", "max_fix_iterations", "model", "models", "skip_phases", "budget_tokens", "budget_usd", "code",
     "failing_behaviour", "simulate_failing_test"]
)  # fmt: skip


def to_value(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, float | int):
        out.number_value = float(value)
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, list):
        out.list_value.values.extend(to_value(v) for v in value)
    else:
        out.struct_value.CopyFrom(to_struct(value))
    return out


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for key, item in value.items():
        out.fields[key].CopyFrom(to_value(item))
    return out


CONFIGURATIONS = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(KNOWN_KEYS, TEXT), VALUES, max_size=6),
)


def submit_requests() -> st.SearchStrategy[pb.ExecuteWorkflowRequest]:
    @st.composite
    def build(draw: st.DrawFn) -> pb.ExecuteWorkflowRequest:
        request = pb.ExecuteWorkflowRequest(
            requirements=draw(st.one_of(TEXT, st.just("a todo API"))),
            workflow_type=draw(st.one_of(WORKFLOW_TYPES, TEXT)),
            priority=draw(st.one_of(st.sampled_from(list(enums.Priority.values())), INT32)),
            request_id=draw(st.one_of(st.just(""), TEXT)),
        )
        configuration = draw(CONFIGURATIONS)
        if configuration is not None:
            request.configuration.CopyFrom(to_struct(configuration))
        return request

    return build()


class Sessions:
    """Session ids the fuzz created, so lookups hit real sessions too, not only unknown ids."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def strategy(self) -> st.SearchStrategy[str]:
        known = st.integers(0, 10_000).map(lambda i: self.ids[i % len(self.ids)] if self.ids else "none")
        return st.one_of(known, TEXT, st.uuids().map(str))


SESSIONS = Sessions()


def check_call(call: Any, *args: Any, allowed: set[grpc.StatusCode] = EXPECTED_CODES, **kwargs: Any) -> Any:
    try:
        return call(*args, timeout=10, **kwargs)
    except grpc.RpcError as error:
        code = error.code()
        assert code in allowed, f"{code}: {error.details()}"
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Only grpc's own message-size limit or the rate limits: never an internal failure in disguise.
            assert "limit" in (error.details() or "").lower() or "larger than" in (error.details() or "")
        return None


@GRPC_SETTINGS
@given(request=submit_requests())
def test_grpc_execute_workflow(stub: pb_grpc.OrchestratorServiceStub, token: str, request: Any) -> None:
    response = check_call(stub.ExecuteWorkflow, request, metadata=(("authorization", f"Bearer {token}"),))
    if response is not None:
        SESSIONS.ids.append(response.session_id)


TERMINAL = {enums.WORKFLOW_STATE_COMPLETED, enums.WORKFLOW_STATE_FAILED, enums.WORKFLOW_STATE_CANCELLED}


@GRPC_SETTINGS
@given(session_id=SESSIONS.strategy(), reason=TEXT, after=st.one_of(st.integers(0, 40), INT64))
def test_grpc_status_cancel_and_watch(
    stub: pb_grpc.OrchestratorServiceStub, token: str, session_id: str, reason: str, after: int
) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    check_call(stub.CancelWorkflow, pb.CancelWorkflowRequest(session_id=session_id, reason=reason), metadata=metadata)
    status = check_call(stub.GetWorkflowStatus, pb.GetWorkflowStatusRequest(session_id=session_id), metadata=metadata)
    ended = status is not None and status.state in TERMINAL
    # The watch of an ended workflow ends by itself, with its terminal event or at once; a live one may wait for
    # events (a few messages or the deadline will do).
    stream = stub.WatchWorkflow(
        pb.WatchWorkflowRequest(session_id=session_id, after_sequence=after), metadata=metadata, timeout=3
    )
    seen = []
    try:
        for event in stream:
            seen.append(event)
            if not ended and len(seen) >= 3:
                break
    except grpc.RpcError as error:
        allowed = EXPECTED_CODES | (set() if ended else {grpc.StatusCode.DEADLINE_EXCEEDED})
        assert error.code() in allowed, f"{error.code()}: {error.details()}"
    finally:
        stream.cancel()
    if ended:
        assert all(e.type != enums.EVENT_TYPE_HEARTBEAT for e in seen), "an ended workflow's watch waited"
        assert not seen or seen[-1].type in {
            enums.EVENT_TYPE_WORKFLOW_COMPLETED,
            enums.EVENT_TYPE_WORKFLOW_FAILED,
            enums.EVENT_TYPE_WORKFLOW_CANCELLED,
        }


@GRPC_SETTINGS
@given(
    page_size=INT32,
    page_token=st.one_of(TEXT, st.binary(max_size=60).map(lambda b: b.hex()), st.just("")),
    state=st.one_of(st.sampled_from(list(enums.WorkflowState.values())), INT32),
    workflow_type=st.one_of(st.just(""), WORKFLOW_TYPES, TEXT),
)
def test_grpc_list_workflows(
    stub: pb_grpc.OrchestratorServiceStub, token: str, page_size: int, page_token: str, state: int, workflow_type: str
) -> None:
    request = pb.ListWorkflowsRequest(
        page_size=page_size, page_token=page_token, state=state, workflow_type=workflow_type
    )
    metadata = (("authorization", f"Bearer {token}"),)
    page = check_call(stub.ListWorkflows, request, metadata=metadata)
    if page is not None and page.next_page_token:
        # A token the server issued always works.
        follow = pb.ListWorkflowsRequest(page_size=page_size, page_token=page.next_page_token, state=state)
        assert check_call(stub.ListWorkflows, follow, metadata=metadata) is not None


@GRPC_SETTINGS
@given(value=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=400))
def test_grpc_random_authorization_is_unauthenticated(stub: pb_grpc.OrchestratorServiceStub, value: str) -> None:
    check_call(
        stub.ListWorkflowTypes,
        pb.ListWorkflowTypesRequest(),
        metadata=(("authorization", value),),
        allowed={grpc.StatusCode.UNAUTHENTICATED},
    )


METHODS = {
    "ExecuteWorkflow": False,
    "GetWorkflowStatus": False,
    "WatchWorkflow": True,
    "CancelWorkflow": False,
    "ListWorkflows": False,
    "ListWorkflowTypes": False,
    "Health": False,
}


@GRPC_SETTINGS
@given(method=st.sampled_from(sorted(METHODS)), raw=st.binary(max_size=200))
def test_grpc_arbitrary_bytes_are_refused_cleanly(channel: grpc.Channel, token: str, method: str, raw: bytes) -> None:
    """Bytes that are not a request message (or are one by chance) of the method: never UNKNOWN or INTERNAL."""
    path = f"/orchestrator.v1.OrchestratorService/{method}"
    metadata = (("authorization", f"Bearer {token}"),)
    if METHODS[method]:
        stream = channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)(
            raw, metadata=metadata, timeout=3
        )
        try:
            next(iter(stream), None)
        except grpc.RpcError as error:
            allowed = EXPECTED_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}
            assert error.code() in allowed, f"{error.code()}: {error.details()}"
        finally:
            stream.cancel()
        return
    call = channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
    check_call(call, raw, metadata=metadata)


# Afterwards ---------------------------------------------------------------------------------------------------


def test_the_server_still_serves_and_its_database_is_sound(
    server: ServerThread, stub: pb_grpc.OrchestratorServiceStub, token: str
) -> None:
    """Last in the module: after every fuzz above."""
    assert stub.Health(pb.HealthRequest(), timeout=10).status == enums.SERVING_STATUS_SERVING
    types = stub.ListWorkflowTypes(
        pb.ListWorkflowTypesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
    )
    assert types.workflow_types
    health = httpx.get(f"http://127.0.0.1:{server.app.http_port}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "serving"  # the REST face's word
    assert server.app.engine is not None
    assert server.app.engine.store.integrity_check() == "ok"

"""A small fake OrchestratorService and a plain-HTTP metrics handler, to test the gateway in isolation.

The fake servicer returns fixed answers and records what reached it; the real service is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc
from google.protobuf import any_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.config import GatewayOptions
from gateway.sidecar import EnvoySidecar
from service.gen.orchestrator.v1 import enums_pb2
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

METRICS_TEXT = b"# TYPE fake_requests_total counter\nfake_requests_total 7\n"
CORS_ORIGIN = "https://app.example.com"
MAX_REQUEST_BYTES = 64 * 1024
INVALID_REQUIREMENTS = "please fail validation"
MISSING_SESSION = "missing"
BIG_SESSION = "big"
BIG_TEXT_CHARS = 3 * 1024 * 1024 // 2  # past Envoy's default 1 MiB buffer
CREATED_AT = timestamp_pb2.Timestamp(seconds=1_700_000_000)


@dataclass
class Seen:
    """What reached the fake servicer, for assertions."""

    requests: list[Any] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def record(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.requests.append(request)
        metadata = dict(context.invocation_metadata() or ())
        self.request_ids.append(str(metadata.get("x-request-id", "")))


class FakeOrchestrator(pb_grpc.OrchestratorServiceServicer):
    """Fixed answers: enough to exercise every REST mapping the gateway configures."""

    def __init__(self) -> None:
        self.seen = Seen()

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExecuteWorkflowResponse:
        self.seen.record(request, context)
        if request.requirements == INVALID_REQUIREMENTS:
            await _abort_invalid(context, self.seen.request_ids[-1])
        # created=False and message="" on purpose: zero values must still be printed.
        return pb.ExecuteWorkflowResponse(
            session_id="session-1", state=enums_pb2.WORKFLOW_STATE_QUEUED, created_at=CREATED_AT
        )

    async def GetWorkflowStatus(
        self, request: pb.GetWorkflowStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetWorkflowStatusResponse:
        self.seen.record(request, context)
        if request.session_id == MISSING_SESSION:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no workflow {request.session_id!r}")
        status = pb.GetWorkflowStatusResponse(
            session_id=request.session_id,
            workflow_type="full",
            state=enums_pb2.WORKFLOW_STATE_RUNNING,
            progress=0,
            current_phase="design",
            created_at=CREATED_AT,
            last_sequence=2,
        )
        if request.session_id == BIG_SESSION:
            status.result.documentation = "d" * BIG_TEXT_CHARS
        return status

    async def WatchWorkflow(
        self, request: pb.WatchWorkflowRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchWorkflowResponse]:
        self.seen.record(request, context)
        kinds = [
            enums_pb2.EVENT_TYPE_WORKFLOW_QUEUED,
            enums_pb2.EVENT_TYPE_WORKFLOW_STARTED,
            enums_pb2.EVENT_TYPE_WORKFLOW_COMPLETED,
        ]
        for sequence, kind in enumerate(kinds, start=1):
            if sequence <= request.after_sequence:
                continue
            yield pb.WatchWorkflowResponse(
                session_id=request.session_id,
                sequence=sequence,
                type=kind,
                data=struct_pb2.Struct(fields={"n": struct_pb2.Value(number_value=sequence)}),
                message="m" * BIG_TEXT_CHARS if request.session_id == BIG_SESSION else "",
            )

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.HealthResponse:
        self.seen.record(request, context)
        return pb.HealthResponse(status=enums_pb2.SERVING_STATUS_SERVING, version="test")


async def _abort_invalid(context: grpc.aio.ServicerContext[Any, Any], request_id: str) -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="requirements", description="too vague")]
    )
    request_info = error_details_pb2.RequestInfo(request_id=request_id)
    details = []
    for detail in (bad_request, request_info):
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid request", details=details)
    await context.abort_with_status(rpc_status.to_status(status))


@dataclass
class Upstream:
    """The fake service as Envoy sees it: a gRPC port and a metrics port."""

    servicer: FakeOrchestrator
    grpc_port: int
    metrics_port: int


class MetricsHandler(BaseHTTPRequestHandler):
    """The service's plain-HTTP ports: metrics and docs, and the live endpoint, which here describes the request
    it got (the real one is tested in tests/service/test_live_channel.py)."""

    def do_GET(self) -> None:
        if "/workflow-events/" in self.path:
            seen = {
                "path": self.path,
                "accept": self.headers.get("accept"),
                "forwarded_port": self.headers.get("x-forwarded-port"),
                "transcoded": self.headers.get("content-type", "").startswith("application/grpc"),
            }
            self._reply(200, "application/x-ndjson", json.dumps(seen).encode() + b"\n")
        elif self.path == "/metrics":
            self._reply(200, "text/plain; version=0.0.4", METRICS_TEXT)
        elif self.path == "/openapi.json":
            self._reply(200, "application/json", b'{"openapi": "3.0.0"}')
        elif self.path.startswith("/docs"):
            self._reply(200, "text/html", b"<html>docs</html>")
        else:
            self._reply(404, "text/plain", b"not here")

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def gateway_options(upstream: Upstream, **overrides: Any) -> GatewayOptions:
    values: dict[str, Any] = {
        "grpc_port": upstream.grpc_port,
        "metrics_port": upstream.metrics_port,
        "live_port": upstream.metrics_port,
        "listen_port": 0,
        "admin_port": 0,
        "cors_allowed_origins": (CORS_ORIGIN,),
        "max_request_bytes": MAX_REQUEST_BYTES,
    }
    values.update(overrides)
    return GatewayOptions(**values)


async def wait_upstream_healthy(sidecar: EnvoySidecar, seconds: float = 10.0) -> None:
    """Waits until Envoy's gRPC health check has marked the fake service healthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        status, body = await sidecar.admin_get("/clusters")
        lines = body.decode().splitlines() if status == 200 else []
        if any(line.startswith("orchestrator_grpc::") and line.endswith("::health_flags::healthy") for line in lines):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("envoy never saw the gRPC upstream as healthy")

"""OrchestratorService: each handler converts the request, awaits one engine call, converts the result."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc

from orchestrator import logcontext
from orchestrator.cache import LruCache
from orchestrator.engine import Engine
from orchestrator.models import EventType
from orchestrator.settings import Settings
from service import auth, convert
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from service.metrics import ServiceMetrics

# Initial metadata key of ListWorkflowTypes' entity tag (lower case: gRPC metadata keys are).
ETAG_HEADER = "etag"


def _tenant(context: grpc.aio.ServicerContext) -> str:
    """The tenant Gatekeeper.admit authenticated for this call ("" with auth off)."""
    principal = auth.current_principal()
    if principal is None:
        # Only a server built without the gatekeeper gets here; failing closed beats serving every tenant's data.
        raise RuntimeError("no authenticated principal for this call: the gatekeeper is not installed")
    return principal.tenant


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):  # type: ignore[misc]
    def __init__(self, settings: Settings, engine: Engine, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics
        self._converted: LruCache[pb.GetWorkflowStatusResponse] = LruCache(capacity=1000, max_age_seconds=60.0)
        self._converted_events: LruCache[pb.WatchWorkflowResponse] = LruCache(capacity=5000, max_age_seconds=60.0)
        self._types: tuple[pb.ListWorkflowTypesResponse, str] | None = None

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExecuteWorkflowResponse:
        submit = convert.submit_from_proto(
            request, max_requirements=self._settings.max_requirements_length, tenant=_tenant(context)
        )
        result = await self._engine.submit(submit)
        logcontext.session_id.set(result.session_id)
        return convert.submit_result_to_proto(result)

    async def GetWorkflowStatus(
        self, request: pb.GetWorkflowStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWorkflowStatusResponse:
        session_id = convert.session_id_from_proto(request.session_id)
        logcontext.session_id.set(session_id)
        status = await self._engine.status(session_id, _tenant(context))
        # A status is fully determined by its session and sequence number; converting a large one (generated
        # code, phase outputs) costs more than the rest of the call, and pollers ask again and again.
        key = f"{status.session_id}:{status.last_sequence}"
        message = self._converted.get(key)
        if message is None:
            message = convert.status_to_proto(status)
            self._converted.put(key, message)
        return message

    async def WatchWorkflow(
        self, request: pb.WatchWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchWorkflowResponse]:
        session_id = convert.session_id_from_proto(request.session_id)
        logcontext.session_id.set(session_id)
        events = await self._engine.watch(session_id, request.after_sequence, _tenant(context))
        self._metrics.watch_streams.inc()
        try:
            async for event in events:
                if event.type is EventType.HEARTBEAT:
                    yield convert.event_to_proto(event)
                    continue
                # Every watcher of a session receives the same stored events: convert each one once.
                key = f"{event.session_id}:{event.sequence}"
                message = self._converted_events.get(key)
                if message is None:
                    message = convert.event_to_proto(event)
                    self._converted_events.put(key, message)
                yield message
        finally:
            self._metrics.watch_streams.dec()

    async def CancelWorkflow(
        self, request: pb.CancelWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelWorkflowResponse:
        session_id = convert.session_id_from_proto(request.session_id)
        logcontext.session_id.set(session_id)
        reason = convert.reason_from_proto(request.reason)
        status = await self._engine.cancel(session_id, reason, _tenant(context))
        return pb.CancelWorkflowResponse(
            session_id=status.session_id, state=convert.STATE_TO_PB[status.state], message="workflow cancelled"
        )

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkflowsResponse:
        query = convert.list_query_from_proto(request, tenant=_tenant(context))
        return convert.page_to_proto(await self._engine.list_workflows(query))

    async def ListWorkflowTypes(
        self, request: pb.ListWorkflowTypesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkflowTypesResponse:
        if self._types is None:
            # The catalog is loaded once at start and never changes while the process runs: convert it, and
            # hash it, once. The strong ETag is over the deterministic serialization, so every replica running
            # the same catalog gives the same tag.
            response = convert.types_to_proto(self._engine.workflow_types())
            digest = hashlib.sha256(response.SerializeToString(deterministic=True)).hexdigest()[:32]
            self._types = (response, f'"{digest}"')
        response, etag = self._types
        # Envoy turns initial metadata into response headers: the REST face answers If-None-Match with 304 from
        # it and marks the reply cacheable. gRPC clients can use it the same way.
        await context.send_initial_metadata(((ETAG_HEADER, etag),))
        return response

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        return convert.health_to_proto(await self._engine.health())

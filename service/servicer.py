"""OrchestratorService: each handler converts the request, awaits one engine call, converts the result."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from orchestrator import logcontext
from orchestrator.engine import Engine
from orchestrator.settings import Settings
from service import convert
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from service.metrics import ServiceMetrics


def _tenant(context: grpc.aio.ServicerContext) -> str:
    # Tenants come from authentication (issue 5); with auth off every caller is the same, empty tenant.
    return ""


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):  # type: ignore[misc]
    def __init__(self, settings: Settings, engine: Engine, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics

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
        return convert.status_to_proto(status)

    async def WatchWorkflow(
        self, request: pb.WatchWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchWorkflowResponse]:
        session_id = convert.session_id_from_proto(request.session_id)
        logcontext.session_id.set(session_id)
        events = await self._engine.watch(session_id, request.after_sequence, _tenant(context))
        self._metrics.watch_streams.inc()
        try:
            async for event in events:
                yield convert.event_to_proto(event)
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
        return convert.types_to_proto(self._engine.workflow_types())

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        return convert.health_to_proto(await self._engine.health())

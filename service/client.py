"""A typed asyncio client over the generated stubs, used by the CLI: retries UNAVAILABLE on idempotent calls,
and its watch resumes from the last sequence it saw when the connection drops."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

T = TypeVar("T")
TERMINAL = {
    enums.EVENT_TYPE_WORKFLOW_COMPLETED,
    enums.EVENT_TYPE_WORKFLOW_FAILED,
    enums.EVENT_TYPE_WORKFLOW_CANCELLED,
}
PRIORITIES = {
    "low": enums.PRIORITY_LOW,
    "normal": enums.PRIORITY_NORMAL,
    "high": enums.PRIORITY_HIGH,
    "critical": enums.PRIORITY_CRITICAL,
}


class OrchestratorClient:
    def __init__(self, target: str, *, retries: int = 5, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)
        self._retries = retries
        self._metadata = metadata

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(self._retries + 1):
            try:
                return await fn()
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self._retries:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def submit(
        self,
        requirements: str,
        workflow_type: str = "full",
        *,
        configuration: dict[str, Any] | None = None,
        priority: str = "normal",
        request_id: str = "",
    ) -> pb.ExecuteWorkflowResponse:
        request = pb.ExecuteWorkflowRequest(
            requirements=requirements, workflow_type=workflow_type, priority=PRIORITIES[priority], request_id=request_id
        )
        if configuration:
            request.configuration.CopyFrom(_struct(configuration))
        # Retrying a submit is only safe with an idempotency key.
        if request_id:
            return await self._call(lambda: self._stub.ExecuteWorkflow(request, metadata=self._metadata))
        return await self._stub.ExecuteWorkflow(request, metadata=self._metadata)  # type: ignore[no-any-return]

    async def status(self, session_id: str) -> pb.GetWorkflowStatusResponse:
        request = pb.GetWorkflowStatusRequest(session_id=session_id)
        return await self._call(lambda: self._stub.GetWorkflowStatus(request, metadata=self._metadata))

    async def cancel(self, session_id: str, reason: str = "") -> pb.CancelWorkflowResponse:
        request = pb.CancelWorkflowRequest(session_id=session_id, reason=reason)
        return await self._call(lambda: self._stub.CancelWorkflow(request, metadata=self._metadata))

    async def list(
        self, *, page_size: int = 0, page_token: str = "", state: Any = 0, workflow_type: str = ""
    ) -> pb.ListWorkflowsResponse:
        request = pb.ListWorkflowsRequest(
            page_size=page_size, page_token=page_token, state=state, workflow_type=workflow_type
        )
        return await self._call(lambda: self._stub.ListWorkflows(request, metadata=self._metadata))

    async def types(self) -> pb.ListWorkflowTypesResponse:
        return await self._call(
            lambda: self._stub.ListWorkflowTypes(pb.ListWorkflowTypesRequest(), metadata=self._metadata)
        )

    async def health(self) -> pb.HealthResponse:
        return await self._call(lambda: self._stub.Health(pb.HealthRequest(), metadata=self._metadata))

    async def watch(self, session_id: str, after_sequence: int = 0) -> AsyncIterator[pb.WatchWorkflowResponse]:
        """Every event after `after_sequence` to the terminal one, reconnecting (and resuming) on UNAVAILABLE."""
        last, failures = after_sequence, 0
        while True:
            call = self._stub.WatchWorkflow(
                pb.WatchWorkflowRequest(session_id=session_id, after_sequence=last), metadata=self._metadata
            )
            try:
                async for event in call:
                    failures = 0
                    if event.type != enums.EVENT_TYPE_HEARTBEAT:
                        last = event.sequence
                    yield event
                    if event.type in TERMINAL:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if exc.code() != grpc.StatusCode.UNAVAILABLE or failures > self._retries:
                    raise
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct

"""Typed clients over the generated stubs, one for asyncio (`OrchestratorClient`, which the CLI uses) and one
blocking (`SyncOrchestratorClient`), with the same methods. Both retry UNAVAILABLE with backoff (a submit is
made safe to retry by its idempotency key), and their `watch` reconnects after a dropped connection and resumes
after the last sequence it saw, so a caller gets every event once, in order, up to the terminal one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf import struct_pb2

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
PriorityName = Literal["low", "normal", "high", "critical"]

TERMINAL = {
    enums.EVENT_TYPE_WORKFLOW_COMPLETED,
    enums.EVENT_TYPE_WORKFLOW_FAILED,
    enums.EVENT_TYPE_WORKFLOW_CANCELLED,
}
PRIORITIES: dict[str, enums.Priority] = {
    "low": enums.PRIORITY_LOW,
    "normal": enums.PRIORITY_NORMAL,
    "high": enums.PRIORITY_HIGH,
    "critical": enums.PRIORITY_CRITICAL,
}
# gRPC waits up to 120 s between reconnection attempts by default, far past the retries below: a server that
# comes back would go unnoticed until the retries ran out.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class WatchInterrupted(Exception):
    """The watch stream kept ending before the terminal event, more times in a row than the retries allow."""


class _Base:
    def __init__(self, *, retries: int, metadata: Metadata, token: str | None) -> None:
        self._retries = retries
        self._metadata = (*metadata, ("authorization", f"Bearer {token}")) if token else metadata

    def _retry_delay(self, name: str, exc: grpc.RpcError, attempt: int) -> float | None:
        """Seconds to wait before retrying after `exc`, or None to raise it: only UNAVAILABLE is retried."""
        if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self._retries:
            return None
        delay = _backoff(attempt)
        logger.info(
            "%s: UNAVAILABLE (%s); retry %d of %d in %.2fs", name, exc.details(), attempt + 1, self._retries, delay
        )
        return delay

    @staticmethod
    def _submit_request(
        requirements: str,
        workflow_type: str,
        configuration: dict[str, Any] | None,
        priority: PriorityName,
        request_id: str,
    ) -> pb.ExecuteWorkflowRequest:
        request = pb.ExecuteWorkflowRequest(
            requirements=requirements,
            workflow_type=workflow_type,
            priority=PRIORITIES[priority],
            # A retried submit must not start a second workflow: the key makes the server return the first one.
            request_id=request_id or str(uuid.uuid4()),
        )
        if configuration:
            request.configuration.CopyFrom(_struct(configuration))
        return request

    @staticmethod
    def _list_request(
        page_size: int, page_token: str, state: enums.WorkflowState | str, workflow_type: str
    ) -> pb.ListWorkflowsRequest:
        return pb.ListWorkflowsRequest(
            page_size=page_size, page_token=page_token, state=state, workflow_type=workflow_type
        )


class OrchestratorClient(_Base):
    """The asyncio client: `async with OrchestratorClient("127.0.0.1:50051") as client: ...`."""

    def __init__(self, target: str, *, retries: int = 5, metadata: Metadata = (), token: str | None = None) -> None:
        """`token` is a bearer JWT, sent on every call as `authorization: Bearer <token>` metadata."""
        super().__init__(retries=retries, metadata=metadata, token=token)
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await fn()
            except grpc.aio.AioRpcError as exc:
                delay = self._retry_delay(name, exc, attempt)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def submit(
        self,
        requirements: str,
        workflow_type: str = "full",
        *,
        configuration: dict[str, Any] | None = None,
        priority: PriorityName = "normal",
        request_id: str = "",
    ) -> pb.ExecuteWorkflowResponse:
        """Queues a workflow. Without `request_id`, a fresh key still makes this call's own retries safe."""
        request = self._submit_request(requirements, workflow_type, configuration, priority, request_id)
        return await self._call("ExecuteWorkflow", lambda: self._stub.ExecuteWorkflow(request, metadata=self._metadata))

    async def status(self, session_id: str) -> pb.GetWorkflowStatusResponse:
        request = pb.GetWorkflowStatusRequest(session_id=session_id)
        return await self._call(
            "GetWorkflowStatus", lambda: self._stub.GetWorkflowStatus(request, metadata=self._metadata)
        )

    async def cancel(self, session_id: str, reason: str = "") -> pb.CancelWorkflowResponse:
        request = pb.CancelWorkflowRequest(session_id=session_id, reason=reason)
        return await self._call("CancelWorkflow", lambda: self._stub.CancelWorkflow(request, metadata=self._metadata))

    async def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: enums.WorkflowState | str = enums.WORKFLOW_STATE_UNSPECIFIED,
        workflow_type: str = "",
    ) -> pb.ListWorkflowsResponse:
        request = self._list_request(page_size, page_token, state, workflow_type)
        return await self._call("ListWorkflows", lambda: self._stub.ListWorkflows(request, metadata=self._metadata))

    async def types(self) -> pb.ListWorkflowTypesResponse:
        request = pb.ListWorkflowTypesRequest()
        return await self._call(
            "ListWorkflowTypes", lambda: self._stub.ListWorkflowTypes(request, metadata=self._metadata)
        )

    async def health(self) -> pb.HealthResponse:
        return await self._call("Health", lambda: self._stub.Health(pb.HealthRequest(), metadata=self._metadata))

    async def watch(self, session_id: str, after_sequence: int = 0) -> AsyncIterator[pb.WatchWorkflowResponse]:
        """Every event after `after_sequence` up to the terminal one, heartbeats included. After a dropped
        connection it reconnects and asks for the events after the last sequence it yielded."""
        last, attempt = after_sequence, 0
        while True:
            request = pb.WatchWorkflowRequest(session_id=session_id, after_sequence=last)
            call = self._stub.WatchWorkflow(request, metadata=self._metadata)
            try:
                async for event in call:
                    attempt = 0
                    if event.type != enums.EVENT_TYPE_HEARTBEAT:
                        last = event.sequence
                    yield event
                    if event.type in TERMINAL:
                        return
                delay = _ended_early(attempt, self._retries, session_id, last)
            except grpc.aio.AioRpcError as exc:
                retry = self._retry_delay("WatchWorkflow", exc, attempt)
                if retry is None:
                    raise
                delay = retry
            finally:
                call.cancel()  # a no-op once it ended; stops the server's stream when the caller stops early
            await asyncio.sleep(delay)
            attempt += 1


class SyncOrchestratorClient(_Base):
    """The blocking client, with the same methods: `with SyncOrchestratorClient("127.0.0.1:50051") as client:`."""

    def __init__(self, target: str, *, retries: int = 5, metadata: Metadata = (), token: str | None = None) -> None:
        """`token` is a bearer JWT, sent on every call as `authorization: Bearer <token>` metadata."""
        super().__init__(retries=retries, metadata=metadata, token=token)
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)

    def __enter__(self) -> SyncOrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                delay = self._retry_delay(name, exc, attempt)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def submit(
        self,
        requirements: str,
        workflow_type: str = "full",
        *,
        configuration: dict[str, Any] | None = None,
        priority: PriorityName = "normal",
        request_id: str = "",
    ) -> pb.ExecuteWorkflowResponse:
        """Queues a workflow. Without `request_id`, a fresh key still makes this call's own retries safe."""
        request = self._submit_request(requirements, workflow_type, configuration, priority, request_id)
        response: pb.ExecuteWorkflowResponse = self._call(
            "ExecuteWorkflow", lambda: self._stub.ExecuteWorkflow(request, metadata=self._metadata)
        )
        return response

    def status(self, session_id: str) -> pb.GetWorkflowStatusResponse:
        request = pb.GetWorkflowStatusRequest(session_id=session_id)
        response: pb.GetWorkflowStatusResponse = self._call(
            "GetWorkflowStatus", lambda: self._stub.GetWorkflowStatus(request, metadata=self._metadata)
        )
        return response

    def cancel(self, session_id: str, reason: str = "") -> pb.CancelWorkflowResponse:
        request = pb.CancelWorkflowRequest(session_id=session_id, reason=reason)
        response: pb.CancelWorkflowResponse = self._call(
            "CancelWorkflow", lambda: self._stub.CancelWorkflow(request, metadata=self._metadata)
        )
        return response

    def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        state: enums.WorkflowState | str = enums.WORKFLOW_STATE_UNSPECIFIED,
        workflow_type: str = "",
    ) -> pb.ListWorkflowsResponse:
        request = self._list_request(page_size, page_token, state, workflow_type)
        response: pb.ListWorkflowsResponse = self._call(
            "ListWorkflows", lambda: self._stub.ListWorkflows(request, metadata=self._metadata)
        )
        return response

    def types(self) -> pb.ListWorkflowTypesResponse:
        request = pb.ListWorkflowTypesRequest()
        response: pb.ListWorkflowTypesResponse = self._call(
            "ListWorkflowTypes", lambda: self._stub.ListWorkflowTypes(request, metadata=self._metadata)
        )
        return response

    def health(self) -> pb.HealthResponse:
        response: pb.HealthResponse = self._call(
            "Health", lambda: self._stub.Health(pb.HealthRequest(), metadata=self._metadata)
        )
        return response

    def watch(self, session_id: str, after_sequence: int = 0) -> Iterator[pb.WatchWorkflowResponse]:
        """Every event after `after_sequence` up to the terminal one, heartbeats included. After a dropped
        connection it reconnects and asks for the events after the last sequence it yielded."""
        last, attempt = after_sequence, 0
        while True:
            request = pb.WatchWorkflowRequest(session_id=session_id, after_sequence=last)
            call = self._stub.WatchWorkflow(request, metadata=self._metadata)
            try:
                for event in call:
                    attempt = 0
                    if event.type != enums.EVENT_TYPE_HEARTBEAT:
                        last = event.sequence
                    yield event
                    if event.type in TERMINAL:
                        return
                delay = _ended_early(attempt, self._retries, session_id, last)
            except grpc.RpcError as exc:
                retry = self._retry_delay("WatchWorkflow", exc, attempt)
                if retry is None:
                    raise
                delay = retry
            finally:
                call.cancel()  # a no-op once it ended; stops the server's stream when the caller stops early
            time.sleep(delay)
            attempt += 1


def _ended_early(attempt: int, retries: int, session_id: str, last: int) -> float:
    """The server only ends a watch after the terminal event; a stream that ends sooner was cut (by a proxy, or a
    replica shutting down) and is resumed like a dropped connection."""
    if attempt >= retries:
        raise WatchInterrupted(f"the watch of {session_id} ended {attempt + 1} times without a terminal event")
    logger.info("WatchWorkflow: stream ended after sequence %d without a terminal event; resuming", last)
    return _backoff(attempt)


def _backoff(attempt: int) -> float:
    """Exponential, capped, with jitter so that many clients of a restarted server do not come back at once."""
    return float(min(FIRST_DELAY_S * 2**attempt, MAX_DELAY_S) * (0.5 + random.random()))


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct

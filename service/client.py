"""Typed clients over the generated stubs, one for asyncio (`OrchestratorClient`, which the CLI uses) and one
blocking (`SyncOrchestratorClient`), with the same methods. Both retry UNAVAILABLE for up to `retry_timeout`
seconds (five minutes by default: a graceful restart takes about 15 s, a database failover can take a minute or
two) with jittered exponential backoff, never sooner than the server's RetryInfo asks; a submit is made safe to
retry by its idempotency key. Their `watch` reconnects after a dropped connection, a server shutting down
(UNAVAILABLE, reason SERVER_SHUTTING_DOWN) or a stream that ends early, and resumes after the last sequence it
saw, so a caller gets every event once, in order, up to the terminal one.
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
from google.rpc import error_details_pb2, status_pb2

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
DEFAULT_RETRY_TIMEOUT_S = 300.0
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class WatchInterrupted(Exception):
    """The watch stream kept ending before the terminal event for longer than the retry timeout."""


class _Retry:
    """The retries of one call, or of one interruption of a watch: jittered exponential backoff, at least the
    server's RetryInfo delay, until `timeout` seconds after the first failure. `reset()` after progress."""

    def __init__(self, name: str, timeout: float) -> None:
        self._name = name
        self._timeout = timeout
        self._attempt = 0
        self._deadline: float | None = None

    def reset(self) -> None:
        self._attempt, self._deadline = 0, None

    def delay(self, why: str, at_least: float = 0.0) -> float | None:
        """Seconds to wait before the next attempt, or None when the timeout has passed."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._timeout
        remaining = self._deadline - now
        if remaining <= 0:
            return None
        delay = min(max(_backoff(self._attempt), at_least), remaining)
        self._attempt += 1
        logger.info("%s: %s; retry %d in %.2fs (giving up in %.0fs)", self._name, why, self._attempt, delay, remaining)
        return delay

    def after_error(self, exc: grpc.RpcError) -> float | None:
        """The wait before retrying after `exc`, or None to raise it: only UNAVAILABLE is retried."""
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        reason, at_least = _retry_details(exc)
        return self.delay(f"UNAVAILABLE{f' {reason}' if reason else ''} ({exc.details()})", at_least)


def _retry_details(exc: grpc.RpcError) -> tuple[str, float]:
    """The ErrorInfo reason and the RetryInfo delay (seconds) the server sent with an error, when it sent them."""
    reason, delay = "", 0.0
    for key, value in exc.trailing_metadata() or ():  # the RpcError of a call is also the call
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # not ours to judge: retry on the backoff alone
            return reason, delay
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(retry):
                delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


class _Base:
    def __init__(self, *, retry_timeout: float, metadata: Metadata, token: str | None) -> None:
        if retry_timeout < 0:
            raise ValueError("retry_timeout must not be negative")
        self._retry_timeout = retry_timeout
        self._metadata = (*metadata, ("authorization", f"Bearer {token}")) if token else metadata

    def _retry(self, name: str) -> _Retry:
        return _Retry(name, self._retry_timeout)

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

    def __init__(
        self,
        target: str,
        *,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT_S,
        metadata: Metadata = (),
        token: str | None = None,
    ) -> None:
        """`retry_timeout`: how long (seconds) a call keeps retrying UNAVAILABLE, and a watch keeps resuming
        without receiving an event; 0 never retries. `token` is a bearer JWT, sent on every call as
        `authorization: Bearer <token>` metadata."""
        super().__init__(retry_timeout=retry_timeout, metadata=metadata, token=token)
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, name: str, fn: Callable[[], Awaitable[T]]) -> T:
        retry = self._retry(name)
        while True:
            try:
                return await fn()
            except grpc.aio.AioRpcError as exc:
                delay = retry.after_error(exc)
                if delay is None:
                    raise
            await asyncio.sleep(delay)

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
        connection or a server shutting down it reconnects (for up to `retry_timeout` without an event) and asks
        for the events after the last sequence it yielded."""
        last, retry = after_sequence, self._retry(f"WatchWorkflow {session_id}")
        while True:
            request = pb.WatchWorkflowRequest(session_id=session_id, after_sequence=last)
            call = self._stub.WatchWorkflow(request, metadata=self._metadata)
            try:
                async for event in call:
                    retry.reset()
                    if event.type != enums.EVENT_TYPE_HEARTBEAT:
                        last = event.sequence
                    yield event
                    if event.type in TERMINAL:
                        return
                delay = _ended_early(retry, session_id, last)
            except grpc.aio.AioRpcError as exc:
                after_error = retry.after_error(exc)
                if after_error is None:
                    raise
                delay = after_error
            finally:
                call.cancel()  # a no-op once it ended; stops the server's stream when the caller stops early
            await asyncio.sleep(delay)


class SyncOrchestratorClient(_Base):
    """The blocking client, with the same methods: `with SyncOrchestratorClient("127.0.0.1:50051") as client:`."""

    def __init__(
        self,
        target: str,
        *,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT_S,
        metadata: Metadata = (),
        token: str | None = None,
    ) -> None:
        """`retry_timeout`: how long (seconds) a call keeps retrying UNAVAILABLE, and a watch keeps resuming
        without receiving an event; 0 never retries. `token` is a bearer JWT, sent on every call as
        `authorization: Bearer <token>` metadata."""
        super().__init__(retry_timeout=retry_timeout, metadata=metadata, token=token)
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)

    def __enter__(self) -> SyncOrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        retry = self._retry(name)
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                delay = retry.after_error(exc)
                if delay is None:
                    raise
            time.sleep(delay)

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
        connection or a server shutting down it reconnects (for up to `retry_timeout` without an event) and asks
        for the events after the last sequence it yielded."""
        last, retry = after_sequence, self._retry(f"WatchWorkflow {session_id}")
        while True:
            request = pb.WatchWorkflowRequest(session_id=session_id, after_sequence=last)
            call = self._stub.WatchWorkflow(request, metadata=self._metadata)
            try:
                for event in call:
                    retry.reset()
                    if event.type != enums.EVENT_TYPE_HEARTBEAT:
                        last = event.sequence
                    yield event
                    if event.type in TERMINAL:
                        return
                delay = _ended_early(retry, session_id, last)
            except grpc.RpcError as exc:
                after_error = retry.after_error(exc)
                if after_error is None:
                    raise
                delay = after_error
            finally:
                call.cancel()  # a no-op once it ended; stops the server's stream when the caller stops early
            time.sleep(delay)


def _ended_early(retry: _Retry, session_id: str, last: int) -> float:
    """The server only ends a watch after the terminal event, or with an error; a stream that ends sooner without
    one was cut (by a proxy) and is resumed like a dropped connection."""
    delay = retry.delay(f"the stream ended after sequence {last} without a terminal event")
    if delay is None:
        raise WatchInterrupted(f"the watch of {session_id} kept ending without a terminal event")
    return delay


def _backoff(attempt: int) -> float:
    """Exponential, capped, with jitter (0.5x to 1.5x) so that many clients of a restarted server do not come back
    at once."""
    return float(min(FIRST_DELAY_S * 2 ** min(attempt, 32), MAX_DELAY_S) * (0.5 + random.random()))


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct

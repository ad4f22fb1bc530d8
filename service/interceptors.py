"""One interceptor around every RPC: request id, domain-error mapping and the standard gRPC metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from orchestrator import logcontext
from orchestrator.errors import OrchestratorError
from service.errors import to_status
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable():
            return value
    return str(uuid.uuid4())


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        _, service, method = (
            details.method.split("/", 2) if details.method.count("/") == 2 else ("", "", details.method)
        )
        labels = (service, method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, labels),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Callable[..., Awaitable[Any]], labels: tuple[str, str]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = self._begin(context, "unary", labels)
            started, code = time.perf_counter(), grpc.StatusCode.OK
            self._metrics.msg_received.labels("unary", *labels).inc()
            try:
                response = await behavior(request, context)
                self._metrics.msg_sent.labels("unary", *labels).inc()
                return response
            except BaseException as exc:
                code, status = self._map(exc, context, rid)
                if status is not None:
                    await context.abort_with_status(status)
                raise
            finally:
                self._end("unary", labels, code, started)

        return wrapper

    def _stream(self, behavior: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rid = self._begin(context, "server_stream", labels)
            started, code = time.perf_counter(), grpc.StatusCode.OK
            self._metrics.msg_received.labels("server_stream", *labels).inc()
            try:
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        self._metrics.msg_sent.labels("server_stream", *labels).inc()
                        yield item
                else:
                    await result  # a handler that writes with context.write() (grpc.health.v1 Watch does)
            except BaseException as exc:
                code, status = self._map(exc, context, rid)
                if status is not None:
                    await context.abort_with_status(status)
                raise
            finally:
                self._end("server_stream", labels, code, started)

        return wrapper

    def _begin(self, context: grpc.aio.ServicerContext, kind: str, labels: tuple[str, str]) -> str:
        rid = _request_id(context)
        logcontext.request_id.set(rid)
        logcontext.session_id.set("")
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        self._metrics.started.labels(kind, *labels).inc()
        return rid

    def _end(self, kind: str, labels: tuple[str, str], code: grpc.StatusCode, started: float) -> None:
        self._metrics.handled.labels(kind, *labels, code.name).inc()
        self._metrics.handling.labels(kind, *labels).observe(time.perf_counter() - started)

    def _map(
        self, exc: BaseException, context: grpc.aio.ServicerContext, rid: str
    ) -> tuple[grpc.StatusCode, grpc.Status | None]:
        """The code for `exc`, and the status to abort with when it is ours to map. Cancellation and
        non-Exception errors are never mapped: they propagate as they are."""
        if isinstance(exc, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED, None
        if isinstance(exc, grpc.aio.AbortError):
            return context.code() or grpc.StatusCode.UNKNOWN, None
        if isinstance(exc, OrchestratorError):
            code, status = to_status(exc, rid)
            if code is grpc.StatusCode.INTERNAL:
                logger.error("domain error %s mapped to INTERNAL", exc.code, exc_info=exc)
            else:
                logger.info("%s: %s", code.name, exc.message)
            return code, status
        if isinstance(exc, Exception):
            logger.error("unexpected error handling a request", exc_info=exc)
            return to_status(None, rid)
        return grpc.StatusCode.UNKNOWN, None

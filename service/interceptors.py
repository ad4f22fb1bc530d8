"""One interceptor around every RPC: request id, admission (authentication, scopes and limits, in
service/auth.py), domain-error mapping and the standard gRPC metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from orchestrator import logcontext
from orchestrator.errors import InvalidArgument, OrchestratorError
from service.auth import Gatekeeper
from service.errors import to_status
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


class _Undecodable:
    """Stands in for a request message that did not parse. grpc.aio answers a deserializer's exception itself,
    as UNKNOWN with the exception's text (and Envoy passes that on as a 500); this way the handler wrapper
    refuses it as INVALID_ARGUMENT instead, after authentication, like any other bad request."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError: malformed, or nested past protobuf's depth limit (100)
            logger.info("undecodable request message (%s: %s)", type(exc).__name__, exc)
            return _Undecodable(type(exc).__name__)

    return parse


def _decoded(message: Any) -> Any:
    if isinstance(message, _Undecodable):
        raise InvalidArgument(
            "the request could not be decoded: it is not a message of this method's type, holds text that is not "
            "UTF-8, or nests deeper than protobuf's limit of 100 levels (a JSON configuration 50 levels deep does)"
        )
    return message


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return request_id_or_new(value)
    return str(uuid.uuid4())


def request_id_or_new(value: object) -> str:
    """The client's (or Envoy's) request id when it is a sane one, else a new one."""
    if isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable():
        return value
    return str(uuid.uuid4())


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: ServiceMetrics, gatekeeper: Gatekeeper) -> None:
        self._metrics = metrics
        self._gate = gatekeeper

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
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, labels, "server_stream"),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, labels, "client_stream"),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # server reflection
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, labels, "bidi_stream"),
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _count_received(self, request: Any, kind: str, labels: tuple[str, str]) -> Any:
        """The request as the handler gets it; a request stream counts each message as it is read."""
        if kind in ("unary", "server_stream"):
            self._metrics.msg_received.labels(kind, *labels).inc()
            return _decoded(request)
        counter = self._metrics.msg_received.labels(kind, *labels)

        async def counted() -> AsyncIterator[Any]:
            async for message in request:
                counter.inc()
                yield _decoded(message)

        return counted()

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], labels: tuple[str, str], kind: str = "unary"
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = self._begin(context, kind, labels)
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                # Admission errors are mapped below like any other: they carry the RequestInfo and are counted.
                async with self._gate.admit(f"/{labels[0]}/{labels[1]}", context):
                    response = await behavior(self._count_received(request, kind, labels), context)
                code = _code_set(context)
                if code is grpc.StatusCode.OK:
                    self._metrics.msg_sent.labels(kind, *labels).inc()
                return response
            except BaseException as exc:
                code, status = self._map(exc, context, rid)
                if status is not None:
                    await context.abort_with_status(status)
                raise
            finally:
                self._end(kind, labels, code, started)

        return wrapper

    def _stream(
        self, behavior: Callable[..., Any], labels: tuple[str, str], kind: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rid = self._begin(context, kind, labels)
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                async with self._gate.admit(f"/{labels[0]}/{labels[1]}", context):  # held while the stream is open
                    result = behavior(self._count_received(request, kind, labels), context)
                    if hasattr(result, "__aiter__"):
                        sent = self._metrics.msg_sent.labels(kind, *labels)
                        async for item in result:
                            sent.inc()
                            yield item
                    else:
                        await result  # a handler that writes with context.write() (grpc.health.v1 Watch does)
                code = _code_set(context)
            except BaseException as exc:
                code, status = self._map(exc, context, rid)
                if status is not None:
                    await context.abort_with_status(status)
                raise
            finally:
                self._end(kind, labels, code, started)

        return wrapper

    def _begin(self, context: grpc.aio.ServicerContext, kind: str, labels: tuple[str, str]) -> str:
        rid = _request_id(context)
        logcontext.request_id.set(rid)
        logcontext.session_id.set("")
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        self._metrics.started.labels(kind, *labels).inc()
        return rid

    def _end(self, kind: str, labels: tuple[str, str], code: grpc.StatusCode, started: float) -> None:
        self._metrics.rpc_handled(kind, *labels, code, time.perf_counter() - started)

    def _map(
        self, exc: BaseException, context: grpc.aio.ServicerContext, rid: str
    ) -> tuple[grpc.StatusCode, grpc.Status | None]:
        """The code for `exc`, and the status to abort with when it is ours to map. Cancellation and
        non-Exception errors are never mapped: they propagate as they are."""
        # A client that goes away cancels the handler's task, or closes a stream handler suspended at a yield.
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
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


def _code_set(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The code a handler that returned normally set with `context.set_code`; OK when it set none."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK

"""The live endpoint, served over HTTP/1.1 by aiohttp inside the service process and routed to by Envoy: the
guide's WebSocket (`/ws/{session_id}`) and the REST watch (`/workflow-events/{session_id}`, NDJSON or Server-Sent
Events). Both stream the events WatchWorkflow streams, in the REST face's JSON, and admit callers through the
gRPC service's own Gatekeeper: one set of tokens, scopes, rate buckets and per-tenant stream caps for every door.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from google.protobuf import json_format

from gateway import restface
from orchestrator import logcontext
from orchestrator.cache import LruCache
from orchestrator.engine import Engine
from orchestrator.errors import (
    InvalidArgument,
    OrchestratorError,
    PermissionDenied,
    ResourceExhausted,
    ServerShuttingDown,
    Unauthenticated,
    Unavailable,
)
from orchestrator.models import EventType, WorkflowEvent
from orchestrator.settings import Settings
from service import auth, convert, errors
from service.auth import Gatekeeper, Principal
from service.interceptors import request_id_or_new
from service.metrics import ServiceMetrics
from service.startup import check_port_free

logger = logging.getLogger(__name__)

WATCH_METHOD: Final = f"/{auth.SERVICE}/WatchWorkflow"
WATCH_MESSAGE: Final = "orchestrator.v1.WatchWorkflowResponse"
# Browsers cannot set headers on a WebSocket; they offer the subprotocols ["bearer", "<jwt>"] instead, and the
# server echoes "bearer". The token stays in a header, never in the URL that access logs record.
BEARER_PROTOCOL: Final = "bearer"
NDJSON: Final = "application/x-ndjson"
EVENT_STREAM: Final = "text/event-stream"
# Set by Envoy's live routes to the port the client connected to: Envoy strips a Host port equal to its own.
FORWARDED_PORT: Final = "x-forwarded-port"
QUERY_PARAMETERS: Final = frozenset({"after_sequence"})
MAX_SEQUENCE_DIGITS: Final = 19  # int64
# A client only ever sends "ping"; anything larger is closed with 1009 by aiohttp.
MAX_CLIENT_MESSAGE_BYTES: Final = 4096
CLOSE_TIMEOUT_SECONDS: Final = 2.0
# The `type` of the last message of a stream that ends before its terminal event (see end_message):
# "reconnect" when resuming can succeed (shutdown, a database outage), "error" when it cannot.
RECONNECT: Final = "reconnect"
STREAM_ERROR: Final = "error"

JsonDict = dict[str, Any]


def error_body(exc: OrchestratorError, status: int, request_id: str) -> JsonDict:
    """The REST face's error body for a domain error, as Envoy's REST face makes it from the same error's
    google.rpc.Status: `error` is the ErrorInfo reason, `details` the field violations and the retry delay."""
    details: JsonDict = {}
    if isinstance(exc, InvalidArgument) and exc.violations:
        details["field_violations"] = [{"field": v.field, "description": v.description} for v in exc.violations]
    if isinstance(exc, ResourceExhausted | Unavailable):
        details["retry_after_seconds"] = exc.retry_after_seconds
    return restface.error_body(status, exc.message, error=exc.code, details=details, request_id=request_id)


def end_message(exc: OrchestratorError, request_id: str, after_sequence: int) -> JsonDict:
    """The last message of a REST stream cut before its terminal event, so that it never ends like a finished
    one: the guide's ErrorResponse plus `type` (RECONNECT or STREAM_ERROR) and `after_sequence`, the sequence to
    resume after (the last event this stream sent)."""
    status = errors.HTTP_STATUS[errors.code_of(exc)]
    body = error_body(exc, status, request_id)
    return {
        "type": RECONNECT if isinstance(exc, Unavailable) else STREAM_ERROR,
        **body,
        "after_sequence": after_sequence,
    }


def _close_code(exc: OrchestratorError) -> int:
    """RFC 6455's codes: 1012 Service Restart for a shutdown, 1013 Try Again Later for other outages."""
    if isinstance(exc, ServerShuttingDown):
        return int(WSCloseCode.SERVICE_RESTART)
    if isinstance(exc, Unavailable):
        return int(WSCloseCode.TRY_AGAIN_LATER)
    return int(WSCloseCode.INTERNAL_ERROR)


class LiveServer:
    """The aiohttp server of the live endpoint on settings.host:settings.live_port (0 picks a free port)."""

    def __init__(self, settings: Settings, engine: Engine, gatekeeper: Gatekeeper, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._engine = engine
        self._gate = gatekeeper
        self._metrics = metrics
        self._converted: LruCache[str] = LruCache(capacity=5000, max_age_seconds=60.0)
        self._sockets: set[web.WebSocketResponse] = set()
        self._streams: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        settings = self._settings
        check_port_free("live", settings.host, settings.live_port, "--live-port")
        app = web.Application()
        for prefix in ("", "/api/v1"):
            app.router.add_get(prefix + "/ws/{session_id}", self._websocket, allow_head=False)
            app.router.add_get(prefix + "/workflow-events/{session_id}", self._watch, allow_head=False)
        # No access log: Envoy keeps one (method, path, status; no header that could carry a credential), and a
        # second one here would only be another place a token might leak to. Handler cancellation: a client that
        # goes away releases its stream slot at once instead of at the next heartbeat's failed write.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.host, settings.live_port, ssl_context=_ssl_context(settings))
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            where = f"{settings.host}:{settings.live_port}"
            raise OSError(f"could not bind the live port {where}: {exc.strerror or exc}") from None
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Closes every WebSocket still open with 1012 (Service Restart: reconnect), ends every watch stream, then
        stops listening. Streams of running workflows have ended before, in-band (Engine.end_watches)."""
        closing = [
            ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"server restarting; reconnect") for ws in self._sockets
        ]
        if closing:
            await asyncio.wait([asyncio.ensure_future(c) for c in closing], timeout=CLOSE_TIMEOUT_SECONDS)
        # Engine.end_watches has told every REST stream to end: let each write its in-band last message (a
        # cancelled one would cut the response mid-body, which a client reads as a broken stream), then cancel
        # what is left.
        running = [task for task in self._streams if not task.done() and task is not asyncio.current_task()]
        if running:
            await asyncio.wait(running, timeout=CLOSE_TIMEOUT_SECONDS)
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- handlers ------------------------------------------------------------------------------------

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        """GET /workflow-events/{id}: NDJSON, or Server-Sent Events with `id:` lines when asked for."""
        rid = self._begin(request)
        sse = EVENT_STREAM in request.headers.get("Accept", "")
        response: web.StreamResponse | None = None
        last = 0
        try:
            async with self._admitted(request, websocket=False) as principal:
                session_id, after = _watch_arguments(request, sse=sse)
                last = after or 0
                events = await self._engine.watch(session_id, last, principal.tenant)
                if sse and after and await self._ended_at(session_id, after, principal.tenant):
                    # An EventSource reconnects whenever a stream ends, and stops only on a 204: without this,
                    # one that has seen the terminal event would ask again every few seconds forever.
                    return web.Response(status=204)
                response = web.StreamResponse(headers={"Content-Type": EVENT_STREAM if sse else NDJSON})
                await response.prepare(request)
                async for event in events:
                    text = self._json(event)
                    await response.write((f"id: {event.sequence}\ndata: {text}\n\n" if sse else text + "\n").encode())
                    if event.type is not EventType.HEARTBEAT:
                        last = event.sequence
                await response.write_eof()
                return response
        except OrchestratorError as exc:
            if response is None:
                return _error_response(exc, rid)
            # The status line is sent: an HTTP/1.1 client would take a plain end for a finished stream, so the
            # last message says why it ended and where to resume.
            logger.info("watch stream ended before its terminal event: %s", exc.message)
            return await _end_stream(response, end_message(exc, rid, last), sse=sse)
        except ConnectionError:
            return response or web.Response(status=499)  # the client went away mid-write: nothing to answer
        except Exception:
            logger.exception("unexpected error in a live watch stream")
            if response is None:
                return _error_response(_internal(rid), rid)
            return await _end_stream(response, end_message(_internal(rid), rid, last), sse=sse)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """GET /ws/{id}: the guide's WebSocket. Answers "ping" with "pong" at any time and pushes events as JSON
        text messages; replays stored ones only when asked with ?after_sequence=N, and stays open after the
        terminal event until the client closes it."""
        rid = self._begin(request)
        ws = web.WebSocketResponse(
            protocols=(BEARER_PROTOCOL,), max_msg_size=MAX_CLIENT_MESSAGE_BYTES, timeout=CLOSE_TIMEOUT_SECONDS
        )
        try:
            # Before aiohttp looks at the offer: when no subprotocol is "bearer" it logs every one offered, and
            # one of them may be a token.
            _subprotocol_token(request)
            if not ws.can_prepare(request).ok:
                raise InvalidArgument("this path serves a WebSocket: send a GET with 'Upgrade: websocket'")
            self._check_origin(request)
            async with contextlib.AsyncExitStack() as admission:
                principal = await admission.enter_async_context(self._admitted(request, websocket=True))
                session_id, after = _watch_arguments(request, sse=False)
                if after is None:
                    # Live events only: the session's current position, whether it runs or has ended.
                    after = (await self._engine.status(session_id, principal.tenant)).last_sequence
                events = await self._engine.watch(session_id, after, principal.tenant)
                await ws.prepare(request)
                # The stream slot is given back once the session's events end (the socket stays open for the
                # client's pings): an open socket on a finished session must not count against the tenant.
                await self._converse(ws, events, events_ended=admission.aclose, after=after, request_id=rid)
                return ws
        except OrchestratorError as exc:
            return ws if ws.prepared else _error_response(exc, rid)
        except ConnectionError:
            return ws
        except Exception:
            logger.exception("unexpected error on a WebSocket")
            if not ws.prepared:
                return _error_response(_internal(rid), rid)
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
            return ws

    async def _converse(
        self,
        ws: web.WebSocketResponse,
        events: AsyncIterator[WorkflowEvent],
        events_ended: Callable[[], Awaitable[None]],
        *,
        after: int,
        request_id: str,
    ) -> None:
        self._sockets.add(ws)
        sending = asyncio.Lock()  # the pump and the pong share one socket

        async def pump() -> None:
            last = after
            try:
                async for event in events:
                    text = self._json(event)
                    async with sending:
                        await ws.send_str(text)
                    if event.type is not EventType.HEARTBEAT:
                        last = event.sequence
                await events_ended()
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:
                if isinstance(exc, OrchestratorError):
                    logger.info("WebSocket events ended before the terminal event: %s", exc.message)
                    ended = exc
                else:
                    logger.exception("unexpected error pushing events on a WebSocket")
                    ended = _internal(request_id)
                # The last message says why and where to resume; the close code says it too, for clients that
                # only look at that (1012 Service Restart, 1013 Try Again Later, 1011 Internal Error).
                async with sending:
                    await ws.send_str(json.dumps(end_message(ended, request_id, last), separators=(",", ":")))
                await ws.close(code=_close_code(ended), message=_close_reason(ended))

        pusher = asyncio.create_task(pump())
        try:
            async for message in ws:
                # Like the guide's endpoint: "ping" gets "pong", anything else is ignored.
                if message.type is WSMsgType.TEXT and message.data == "ping":
                    async with sending:
                        await ws.send_str("pong")
        finally:
            self._sockets.discard(ws)
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pusher

    async def _ended_at(self, session_id: str, after: int, tenant: str) -> bool:
        status = await self._engine.status(session_id, tenant)
        return status.state.terminal and after >= status.last_sequence

    # --- shared steps --------------------------------------------------------------------------------

    def _begin(self, request: web.Request) -> str:
        rid = request_id_or_new(request.headers.get("x-request-id"))
        logcontext.request_id.set(rid)
        logcontext.session_id.set("")
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)
        return rid

    @contextlib.asynccontextmanager
    async def _admitted(self, request: web.Request, *, websocket: bool) -> AsyncIterator[Principal]:
        """The gRPC watch's admission (token, read scope, rate token, stream slot), held while the stream is open."""
        credentials = [("authorization", value) for value in request.headers.getall("Authorization", [])]
        if websocket:
            token = _subprotocol_token(request)
            if token is not None:
                credentials.append(("authorization", f"Bearer {token}"))
        async with self._gate.admit_call(WATCH_METHOD, credentials, request.remote or "unknown") as principal:
            assert principal is not None  # WatchWorkflow is not a public method
            self._metrics.watch_streams.inc()
            try:
                yield principal
            finally:
                self._metrics.watch_streams.dec()

    def _check_origin(self, request: web.Request) -> None:
        """Cross-site WebSocket hijacking: a page of another site may open a WebSocket to this one and read what
        it sends (with auth off, everything). A browser always sends Origin; it must be this host or a
        configured CORS origin."""
        origin = request.headers.get("Origin")
        if origin is None or origin in self._settings.cors_allowed_origins:
            return
        if not _same_host(origin, request.headers.get("Host", ""), request.headers.get(FORWARDED_PORT)):
            raise PermissionDenied(
                "this page's origin may not open the live channel: serve it from this host or add it to "
                "ORCHESTRATOR_CORS_ALLOWED_ORIGINS",
                reason="ORIGIN_NOT_ALLOWED",
            )

    def _json(self, event: WorkflowEvent) -> str:
        """The event as WatchWorkflow sends it, in the REST face's JSON; each stored event is rendered once."""
        key = f"{event.session_id}:{event.sequence}"
        if event.type is not EventType.HEARTBEAT and (text := self._converted.get(key)) is not None:
            return text
        proto = json_format.MessageToDict(
            convert.event_to_proto(event),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        text = json.dumps(restface.to_rest(WATCH_MESSAGE, proto), separators=(",", ":"), ensure_ascii=False)
        if event.type is not EventType.HEARTBEAT:
            self._converted.put(key, text)
        return text


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The gRPC port's TLS (and mutual TLS) on this port too: it is another door to the same data."""
    tls = settings.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


# --- request parsing --------------------------------------------------------------------------------


def _watch_arguments(request: web.Request, *, sse: bool) -> tuple[str, int | None]:
    """The session id and where to resume: Last-Event-ID (an EventSource reconnecting, SSE only) wins over
    ?after_sequence, which stays in the URL it reconnects to. None when neither is given."""
    unknown = sorted(set(request.query) - QUERY_PARAMETERS)
    if unknown:
        raise InvalidArgument.field(unknown[0], "is not a query parameter of this path; known: after_sequence")
    session_id = convert.session_id_from_proto(request.match_info["session_id"])
    logcontext.session_id.set(session_id)
    values = request.query.getall("after_sequence", [])
    if len(values) > 1:
        raise InvalidArgument.field("after_sequence", "is given more than once")
    after = _sequence("after_sequence", values[0]) if values else None
    last_event_id = request.headers.get("Last-Event-ID", "").strip() if sse else ""
    if last_event_id:
        after = _sequence("Last-Event-ID", last_event_id)
    return session_id, after


def _sequence(field: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_SEQUENCE_DIGITS:
        raise InvalidArgument.field(field, "must be a sequence number: a whole number, 0 or more")
    return int(value)


def _subprotocol_token(request: web.Request) -> str | None:
    """The token a browser sends as the subprotocol after "bearer" (Sec-WebSocket-Protocol: bearer, <jwt>)."""
    offered = [p.strip() for header in request.headers.getall("Sec-WebSocket-Protocol", []) for p in header.split(",")]
    if not offered:
        return None
    if BEARER_PROTOCOL not in offered:
        # The only subprotocol this endpoint speaks; whatever else was offered is never echoed or logged.
        raise Unauthenticated(
            "the only WebSocket subprotocol is 'bearer', followed by the token: protocols ['bearer', '<JWT>']",
            "TOKEN_MALFORMED",
        )
    position = offered.index(BEARER_PROTOCOL) + 1
    if position >= len(offered) or not offered[position]:
        raise Unauthenticated(
            "the 'bearer' WebSocket subprotocol must be followed by the token: protocols ['bearer', '<JWT>']",
            "TOKEN_MALFORMED",
        )
    return offered[position]


def _same_host(origin: str, host: str, forwarded_port: str | None) -> bool:
    try:
        parts = urlsplit(origin)
        origin_host, origin_port = parts.hostname, parts.port
        served = urlsplit(f"//{host}")
        served_host, served_port = served.hostname, served.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not origin_host or origin_host != served_host:
        return False
    default = 443 if parts.scheme == "https" else 80
    if served_port is None and forwarded_port is not None and forwarded_port.isdigit():
        served_port = int(forwarded_port)
    return (origin_port or default) == (served_port or default)


def _internal(request_id: str) -> OrchestratorError:
    """An unexpected failure, answered as INTERNAL without its text (logged with its traceback)."""
    return OrchestratorError(f"internal error (request id {request_id})")


async def _end_stream(response: web.StreamResponse, message: JsonDict, *, sse: bool) -> web.StreamResponse:
    """Writes the last message of a cut stream and ends it. SSE names it (`event: reconnect`, with `retry:` set
    to the retry delay so an EventSource waits that long before it reconnects with Last-Event-ID); NDJSON has it
    as a last line."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    if sse:
        retry = message.get("details", {}).get("retry_after_seconds")
        wait = f"retry: {int(retry * 1000)}\n" if isinstance(retry, int | float) else ""
        frame = f"event: {message['type']}\n{wait}data: {text}\n\n"
    else:
        frame = text + "\n"
    with contextlib.suppress(ConnectionError):
        await response.write(frame.encode())
        await response.write_eof()
    return response


def _close_reason(exc: OrchestratorError) -> bytes:
    """A WebSocket close reason: at most 123 bytes (RFC 6455), so the machine code rather than the message."""
    return exc.code.encode()[:123]


def _error_response(exc: OrchestratorError, request_id: str) -> web.Response:
    status = errors.HTTP_STATUS[errors.code_of(exc)]
    headers = {"x-request-id": request_id}
    if isinstance(exc, ResourceExhausted | Unavailable):
        headers["Retry-After"] = restface.retry_after_header(exc.retry_after_seconds)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="orchestrator"'
    return web.json_response(error_body(exc, status, request_id), status=status, headers=headers)

"""The live channel through a real Envoy in front of the real service: the guide's WebSocket at /ws/{session_id}
(real WebSocket clients: aiohttp's, and a headless Chromium page) and the REST watch as NDJSON or Server-Sent
Events, with auth off and on, the gRPC watch's tenants, scopes and stream caps, and heartbeats that carry the
session's progress."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
import pytest

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_auth import AUDIENCE, ISSUER, SECRET, hs256
from tests.service.test_grpc_api import wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]

AUTH = {"enabled": True, "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}
ORIGIN = "https://console.example.com"
NOWHERE = "00000000-0000-0000-0000-000000000000"
TERMINAL = {"workflow_completed", "workflow_failed", "workflow_cancelled"}
PHASES_OF_FULL = 6
RECEIVE_SECONDS = 15.0


# --- the service ---------------------------------------------------------------------------------------------


class Live:
    """The real service with its Envoy sidecar (one per test: DBOS allows one engine per process)."""

    def __init__(self, data_dir: Path, runner: ScriptedRunner) -> None:
        self._data_dir = data_dir
        self.runner = runner
        self.app: App | None = None

    async def start(self, *, auth: bool = False, **overrides: Any) -> App:
        assert self.app is None, "one service per test"
        settings = make_settings(self._data_dir, envoy=True, auth=AUTH if auth else {"enabled": False}, **overrides)
        self.app = App(settings, runner=self.runner)
        await self.app.start()
        return self.app

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.app.http_port

    def ws_url(self, session_id: str, query: str = "", prefix: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{prefix}/ws/{session_id}{query}"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=20)

    async def submit(self, token: str | None = None, workflow_type: str = "full") -> str:
        async with self.http() as http:
            response = await http.post(
                "/execute-workflow",
                json={"requirements": "a URL shortener", "workflow_type": workflow_type},
                headers=bearer(token),
            )
        assert response.status_code == 200, response.text
        return str(response.json()["session_id"])

    async def finished(self, token: str | None = None) -> tuple[str, list[dict[str, Any]]]:
        """A session run to its end, and its stored events (read over NDJSON)."""
        session_id = await self.submit(token)
        async with self.http() as http:
            events = await ndjson(http, f"/workflow-events/{session_id}", headers=bearer(token))
        assert kind(events[-1]) == "workflow_completed"
        return session_id, events

    async def close(self) -> None:
        if self.app is not None:
            await self.app.stop(grace=0.5)
            self.app = None


@pytest.fixture
async def live(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[Live]:
    service = Live(tmp_path / "data", runner)
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


# --- helpers -------------------------------------------------------------------------------------------------


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def kind(event: dict[str, Any]) -> str:
    """The event's type as a REST word (the REST face's `workflow_completed`; proto JSON's names, lowered)."""
    return str(event["type"]).lower().removeprefix("event_type_")


def sequences(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["sequence"]) for e in events]


async def ndjson(http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
    return [event for event in events if kind(event) != "heartbeat"]


async def sse(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """(id, event) of every SSE frame but heartbeats."""
    async with http.stream("GET", path, headers={"accept": "text/event-stream", **(headers or {})}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream"
        text = (await response.aread()).decode()
    frames = []
    for frame in filter(None, text.split("\n\n")):
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(fields) == {"id", "data"}, frame
        event = json.loads(fields["data"])
        if kind(event) != "heartbeat":
            frames.append((int(fields["id"]), event))
    return frames


async def receive(ws: aiohttp.ClientWebSocketResponse) -> str:
    message = await asyncio.wait_for(ws.receive(), RECEIVE_SECONDS)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return str(message.data)


async def events_until_terminal(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(await receive(ws))
        if kind(event) == "heartbeat":
            continue
        events.append(event)
        if kind(event) in TERMINAL:
            return events


async def handshake(live: Live, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """A WebSocket opening handshake sent by hand, so a refusal's status, headers and JSON body can be read."""
    upgrade = {
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": base64.b64encode(secrets.token_bytes(16)).decode(),
    }
    async with live.http() as http:
        return await http.get(path, headers={**upgrade, **(headers or {})})


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The REST face's error body, as every other REST path answers it."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert body["message"] and body["detail"] == body["message"], body
    assert isinstance(body["details"], dict) and body["timestamp"], body
    assert body["request_id"] == response.headers["x-request-id"], body
    assert response.headers["x-content-type-options"] == "nosniff"
    return body


# --- the guide's WebSocket, auth off -------------------------------------------------------------------------


async def test_ping_gets_pong_first_on_a_live_and_on_a_finished_session(
    live: Live, session: aiohttp.ClientSession
) -> None:
    await live.start()
    finished, _ = await live.finished()
    live.runner.gate("design")
    running = await live.submit()
    # Nothing happens in the session from here on, so any message before the pong would be a replay.
    await asyncio.wait_for(live.runner.started_event(running, "design").wait(), RECEIVE_SECONDS)
    for session_id, prefix in [(running, ""), (finished, "/api/v1"), (finished, "")]:
        async with session.ws_connect(live.ws_url(session_id, prefix=prefix)) as ws:
            for _ in range(3):
                await ws.send_str("ping")
                assert await receive(ws) == "pong", (session_id, prefix)
            # Not replayed, not closed: a guide client that never sends anything still gets nothing but live events.
            await ws.send_str("hello")  # anything but "ping" is ignored, as the guide's endpoint does
            await ws.send_str("ping")
            assert await receive(ws) == "pong"
            assert not ws.closed


async def test_events_are_pushed_live_in_order_up_to_the_terminal_one(
    live: Live, session: aiohttp.ClientSession
) -> None:
    await live.start()
    gate = live.runner.gate("design")
    session_id = await live.submit()
    await asyncio.wait_for(live.runner.started_event(session_id, "design").wait(), RECEIVE_SECONDS)
    async with live.http() as http:
        seen = int((await http.get(f"/workflow-status/{session_id}")).json()["last_sequence"])
    async with session.ws_connect(live.ws_url(session_id)) as ws:
        await ws.send_str("ping")
        assert await receive(ws) == "pong"  # connected before anything new happened
        gate.set()
        events = await events_until_terminal(ws)
        assert sequences(events) == list(range(seen + 1, seen + 1 + len(events)))
        assert kind(events[-1]) == "workflow_completed"
        assert events[-1]["session_id"] == session_id
        # It stays open after the terminal event, until the client closes it.
        await ws.send_str("ping")
        assert await receive(ws) == "pong"
    async with live.http() as http:
        stored = await ndjson(http, f"/workflow-events/{session_id}")
    assert stored[seen:] == events  # the same events, in the same JSON, as the REST watch


async def test_after_sequence_replays_the_stored_events_first(live: Live, session: aiohttp.ClientSession) -> None:
    await live.start()
    session_id, stored = await live.finished()
    async with session.ws_connect(live.ws_url(session_id, "?after_sequence=3")) as ws:
        replayed = await events_until_terminal(ws)
        await ws.send_str("ping")
        assert await receive(ws) == "pong"
    assert replayed == stored[3:]
    async with session.ws_connect(live.ws_url(session_id, "?after_sequence=0", prefix="/api/v1")) as ws:
        assert await events_until_terminal(ws) == stored


async def test_refusals_before_the_upgrade_are_json(live: Live) -> None:
    await live.start(cors_allowed_origins=ORIGIN)
    session_id, stored = await live.finished()
    body = assert_error(await handshake(live, f"/ws/{NOWHERE}"), 404, "NOT_FOUND")
    assert NOWHERE in body["message"]
    body = assert_error(await handshake(live, "/ws/not%20an%20id"), 400, "INVALID_ARGUMENT")
    assert body["details"]["field_violations"][0]["field"] == "session_id"
    past = f"?after_sequence={len(stored) + 1}"
    for query, field in [("?after_sequence=x", "after_sequence"), (past, "after_sequence"), ("?token=abc", "token")]:
        body = assert_error(await handshake(live, f"/ws/{session_id}{query}"), 400, "INVALID_ARGUMENT")
        assert body["details"]["field_violations"][0]["field"] == field, body
    async with live.http() as http:
        assert_error(await http.get(f"/ws/{session_id}"), 400, "INVALID_ARGUMENT")  # not an upgrade


async def test_origin_must_be_this_host_or_a_configured_one(live: Live, session: aiohttp.ClientSession) -> None:
    await live.start(cors_allowed_origins=ORIGIN)
    session_id, _ = await live.finished()
    for origin in ("https://evil.example", f"http://localhost:{live.port}", "http://127.0.0.1:1", "null"):
        body = assert_error(await handshake(live, f"/ws/{session_id}", {"origin": origin}), 403, "ORIGIN_NOT_ALLOWED")
        assert "ORCHESTRATOR_CORS_ALLOWED_ORIGINS" in body["message"]
    for origin in (ORIGIN, f"http://127.0.0.1:{live.port}"):
        async with session.ws_connect(live.ws_url(session_id), origin=origin) as ws:
            await ws.send_str("ping")
            assert await receive(ws) == "pong", origin


# --- the REST watch ------------------------------------------------------------------------------------------


async def test_rest_watch_ndjson_and_sse_with_ids_and_last_event_id(live: Live) -> None:
    await live.start()
    session_id, stored = await live.finished()
    assert sequences(stored) == list(range(1, len(stored) + 1))
    async with live.http() as http:
        assert await ndjson(http, f"/api/v1/workflow-events/{session_id}?after_sequence=4") == stored[4:]
        frames = await sse(http, f"/workflow-events/{session_id}")
        assert [i for i, _ in frames] == sequences(stored)
        assert [e for _, e in frames] == stored
        # An EventSource that reconnects sends the last id it saw; it wins over the after_sequence in its URL.
        resumed = await sse(http, f"/workflow-events/{session_id}?after_sequence=2", {"last-event-id": "9"})
        assert [i for i, _ in resumed] == sequences(stored)[9:]
        # Resuming after the terminal event: 204, the one answer that stops an EventSource from reconnecting.
        ended = {"accept": "text/event-stream", "last-event-id": str(len(stored))}
        assert (await http.get(f"/workflow-events/{session_id}", headers=ended)).status_code == 204
        assert (await http.get(f"/workflow-events/{session_id}?after_sequence={len(stored)}")).text == ""  # NDJSON
        # Errors come before the first byte, with the status a REST client expects.
        assert_error(await http.get(f"/workflow-events/{NOWHERE}"), 404, "NOT_FOUND")
        assert_error(await http.get("/workflow-events/%ff%fe"), 400, "INVALID_ARGUMENT")
        assert_error(await http.get(f"/workflow-events/{session_id}?after_sequence=-1"), 400, "INVALID_ARGUMENT")
        assert_error(await http.get(f"/workflow-events/{session_id}?bogus=1"), 400, "INVALID_ARGUMENT")
        sse_headers = {"accept": "text/event-stream", "last-event-id": "x"}
        bad_id = await http.get(f"/workflow-events/{session_id}", headers=sse_headers)
        body = assert_error(bad_id, 400, "INVALID_ARGUMENT")
        assert body["details"]["field_violations"][0]["field"] == "Last-Event-ID"


async def test_a_live_rest_watch_ends_after_the_terminal_event(live: Live) -> None:
    await live.start()
    gate = live.runner.gate("review")
    session_id = await live.submit()
    async with live.http() as http:
        watcher = asyncio.create_task(sse(http, f"/workflow-events/{session_id}"))
        await asyncio.wait_for(live.runner.started_event(session_id, "review").wait(), RECEIVE_SECONDS)
        gate.set()
        frames = await asyncio.wait_for(watcher, RECEIVE_SECONDS)
    assert [i for i, _ in frames] == list(range(1, len(frames) + 1))
    assert kind(frames[-1][1]) == "workflow_completed"


async def test_heartbeats_carry_the_current_progress_and_phase(live: Live, session: aiohttp.ClientSession) -> None:
    await live.start(watch_heartbeat_seconds=0.3)
    live.runner.gate("design")
    session_id = await live.submit()
    await asyncio.wait_for(live.runner.started_event(session_id, "design").wait(), RECEIVE_SECONDS)
    async with live.http() as http:
        status = (await http.get(f"/workflow-status/{session_id}")).json()
    progress = 100 // PHASES_OF_FULL  # requirements done, design running
    assert status["progress"] == progress and status["current_phase"] == "design"

    def assert_heartbeat(event: dict[str, Any]) -> None:
        assert kind(event) == "heartbeat", event
        assert event["progress"] == progress and event["phase"] == "design", event
        assert int(event["sequence"]) == int(status["last_sequence"]), event

    async with session.ws_connect(live.ws_url(session_id)) as ws:
        assert_heartbeat(json.loads(await receive(ws)))
    path = f"/workflow-events/{session_id}?after_sequence={status['last_sequence']}"
    async with live.http() as http, http.stream("GET", path) as stream:
        assert_heartbeat(json.loads(await anext(stream.aiter_lines())))
    assert live.app is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{live.app.grpc_port}") as channel:
        request = pb.WatchWorkflowRequest(session_id=session_id, after_sequence=int(status["last_sequence"]))
        call = pb_grpc.OrchestratorServiceStub(channel).WatchWorkflow(request)
        beat = await asyncio.wait_for(call.read(), RECEIVE_SECONDS)
        call.cancel()
    assert beat.type == enums.EVENT_TYPE_HEARTBEAT
    assert (beat.progress, beat.phase, beat.state) == (progress, "design", enums.WORKFLOW_STATE_RUNNING)


# --- auth on -------------------------------------------------------------------------------------------------


async def test_tokens_tenants_and_scopes(live: Live, session: aiohttp.ClientSession) -> None:
    await live.start(auth=True)
    token = hs256(tenant="tenant-a")
    session_id, _ = await live.finished(token)
    # A browser's way: the subprotocols ["bearer", <jwt>]; the server picks "bearer".
    async with session.ws_connect(live.ws_url(session_id), protocols=("bearer", token)) as ws:
        assert ws.protocol == "bearer"
        await ws.send_str("ping")
        assert await receive(ws) == "pong"
    async with session.ws_connect(live.ws_url(session_id), headers=bearer(token)) as ws:
        await ws.send_str("ping")
        assert await receive(ws) == "pong"
    body = assert_error(await handshake(live, f"/ws/{session_id}"), 401, "TOKEN_MISSING")
    assert "bearer" in body["message"].lower()
    protocol = {"sec-websocket-protocol": "bearer"}
    assert_error(await handshake(live, f"/ws/{session_id}", protocol), 401, "TOKEN_MALFORMED")
    forged = {"sec-websocket-protocol": f"bearer, {token[:-4]}AAAA"}
    assert_error(await handshake(live, f"/ws/{session_id}", forged), 401, "TOKEN_SIGNATURE_INVALID")
    other = {"sec-websocket-protocol": f"bearer, {hs256(tenant='tenant-b')}"}
    body = assert_error(await handshake(live, f"/ws/{session_id}", other), 404, "NOT_FOUND")
    assert session_id in body["message"]  # the same answer as for a session that does not exist
    write_only = {"sec-websocket-protocol": f"bearer, {hs256(tenant='tenant-a', scope='workflows:write')}"}
    assert_error(await handshake(live, f"/ws/{session_id}", write_only), 403, "SCOPE_MISSING")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(live.ws_url(session_id))
    assert refused.value.status == 401
    async with live.http() as http:
        assert_error(await http.get(f"/workflow-events/{session_id}"), 401, "TOKEN_MISSING")
        other_tenant = bearer(hs256(tenant="tenant-b"))
        assert_error(await http.get(f"/workflow-events/{session_id}", headers=other_tenant), 404, "NOT_FOUND")
        assert len(await sse(http, f"/workflow-events/{session_id}", bearer(token))) > 1


async def test_the_token_lands_in_no_log(
    live: Live, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = await live.start(auth=True)
    token = hs256(tenant="tenant-a")
    session_id, _ = await live.finished(token)
    async with session.ws_connect(live.ws_url(session_id, "?after_sequence=0"), protocols=("bearer", token)) as ws:
        await events_until_terminal(ws)
    hijack = {"sec-websocket-protocol": f"bearer, {token}", "origin": "https://evil.example"}
    assert (await handshake(live, f"/ws/{session_id}", hijack)).status_code == 403
    envoy_log = app._envoy.log_path  # type: ignore[union-attr]
    await live.close()  # Envoy writes its access log out as it exits (otherwise every 10 s)
    logged = envoy_log.read_text(errors="replace")
    assert logged.count(f"/ws/{session_id}") == 2, logged  # both WebSocket requests are in the access log
    signature = token.rsplit(".", 1)[1]
    assert signature not in logged
    assert signature not in caplog.text


async def test_streams_are_capped_per_tenant_across_every_door(live: Live, session: aiohttp.ClientSession) -> None:
    app = await live.start(auth=True, max_watch_streams_per_tenant=2)
    live.runner.gate("requirements")  # sessions stay live, so streams stay open
    a, b = hs256(tenant="tenant-a"), hs256(tenant="tenant-b")
    session_id = await live.submit(a)
    first = await session.ws_connect(live.ws_url(session_id), protocols=("bearer", a))
    async with live.http() as http, http.stream("GET", f"/workflow-events/{session_id}", headers=bearer(a)) as stream:
        lines = stream.aiter_lines()  # kept: a dropped line iterator closes the stream
        assert kind(json.loads(await anext(lines))) == "workflow_queued"  # open on the server
        refused = await handshake(live, f"/ws/{session_id}", {"sec-websocket-protocol": f"bearer, {a}"})
        body = assert_error(refused, 429, "TOO_MANY_WATCH_STREAMS")
        assert refused.headers["retry-after"] == "1" and body["details"]["retry_after_seconds"] == 1
        capped_rest = await http.get(f"/workflow-events/{session_id}", headers=bearer(a))
        assert_error(capped_rest, 429, "TOO_MANY_WATCH_STREAMS")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:  # the gRPC watch shares them
            call = pb_grpc.OrchestratorServiceStub(channel).WatchWorkflow(
                pb.WatchWorkflowRequest(session_id=session_id), metadata=(("authorization", f"Bearer {a}"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as capped:
                await call.read()
            assert capped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = await live.submit(b)
        async with session.ws_connect(live.ws_url(other), protocols=("bearer", b)) as ws:  # per tenant
            await ws.send_str("ping")
            assert await receive(ws) == "pong"
        await first.close()  # closing one frees its slot

        async def reopened() -> bool:
            try:
                async with session.ws_connect(live.ws_url(session_id), protocols=("bearer", a)):
                    return True
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429
                return False

        await wait_for(reopened, timeout=10)


# --- a real browser ------------------------------------------------------------------------------------------

PAGE_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>live</title></head><body>
<ol id="messages"></ol><div id="status">waiting</div>
<img src="/hold" alt="">
<script>
const list = document.getElementById("messages");
const status = document.getElementById("status");
const note = (text) => { const li = document.createElement("li"); li.textContent = text; list.appendChild(li); };
const finish = (text) => { status.textContent = text; fetch("/done"); };
const TERMINAL = ["workflow_completed", "workflow_failed", "workflow_cancelled"];
"""

WEBSOCKET_PAGE = PAGE_HEAD + """
// The guide's client: a WebSocket with the token as a subprotocol (a browser cannot set headers on one).
const ws = new WebSocket(%(url)s, ["bearer", %(token)s]);
let pongs = 0;
ws.onopen = () => { note("open " + ws.protocol); ws.send("ping"); };
ws.onmessage = (message) => {
  if (message.data === "pong") {
    pongs += 1;
    note("pong");
    if (pongs === 1) { fetch("/ready"); } else { ws.close(1000); finish("done"); }
    return;
  }
  const event = JSON.parse(message.data);
  if (event.type === "heartbeat") { return; }
  note("event " + event.sequence + " " + event.type);
  if (TERMINAL.includes(event.type)) { ws.send("ping"); }
};
ws.onerror = () => { note("error"); };
ws.onclose = (close) => { if (pongs < 2) { finish("closed " + close.code); } };
</script></body></html>
"""

EVENT_SOURCE_PAGE = PAGE_HEAD + """
// A plain EventSource: it reconnects by itself when the stream ends, sending the last id it saw.
const source = new EventSource(%(url)s);
let ready = false;
source.onmessage = (message) => {
  const event = JSON.parse(message.data);
  if (event.type === "heartbeat") { return; }
  note("event " + message.lastEventId + " " + event.sequence + " " + event.type);
  if (!ready) { ready = true; fetch("/ready"); }
};
source.onerror = () => {
  if (source.readyState === EventSource.CLOSED) { finish("closed"); } else { note("reconnecting"); }
};
</script></body></html>
"""


class PageServer:
    """Serves the page from another origin than the API (the case the origin check must allow when configured);
    /hold delays the page's load event, and so Chromium's --dump-dom, until the page says it is done."""

    def __init__(self) -> None:
        self.page = b""
        self.ready = threading.Event()
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/":
                    self._reply("text/html; charset=utf-8", outer.page)
                elif self.path == "/ready":
                    outer.ready.set()
                    self._reply("text/plain", b"ok")
                elif self.path == "/done":
                    outer.done.set()
                    self._reply("text/plain", b"ok")
                elif self.path == "/hold":
                    outer.done.wait(60)
                    self._reply("image/gif", b"")
                else:
                    self.send_error(404)

            def _reply(self, content_type: str, body: bytes) -> None:
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self._server.shutdown()
        self._server.server_close()

    async def browse(self, chromium: str, profile: Path, gate: asyncio.Event) -> tuple[str, list[str]]:
        """Loads the page in headless Chromium, opens `gate` once the page says it is ready, and returns the
        page's status line and list items as they are in the DOM when it is done."""
        browser = await asyncio.create_subprocess_exec(
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            "--virtual-time-budget=5000",
            self.origin + "/",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(asyncio.to_thread(self.ready.wait, 60), 60)
            gate.set()
            dom, _ = await asyncio.wait_for(browser.communicate(), 60)
        finally:
            if browser.returncode is None:
                browser.kill()
                await browser.wait()
        text = dom.decode()
        found = re.search(r'<div id="status">(.*?)</div>', text)
        assert found, text
        return html.unescape(found.group(1)), [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", text)]


@pytest.fixture
def chromium() -> Iterator[str]:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("ORCHESTRATOR_REQUIRE_CHROMIUM") == "1":
            pytest.fail("the browser test is required (ORCHESTRATOR_REQUIRE_CHROMIUM=1) but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/test.sh does)")
    yield found


async def test_a_browser_page_pings_and_follows_a_session(live: Live, chromium: str, tmp_path: Path) -> None:
    with PageServer() as page:
        await live.start(auth=True, cors_allowed_origins=page.origin)
        token = hs256(tenant="tenant-a")
        gate = live.runner.gate("design")
        session_id = await live.submit(token)
        await asyncio.wait_for(live.runner.started_event(session_id, "design").wait(), RECEIVE_SECONDS)
        page.page = (WEBSOCKET_PAGE % {"url": json.dumps(live.ws_url(session_id)), "token": json.dumps(token)}).encode()
        # The page has its pong before anything else happens; then the session runs to its end.
        status, items = await page.browse(chromium, tmp_path / "chromium", gate)
    assert status == "done", items
    assert items[:2] == ["open bearer", "pong"], items
    assert items[-1] == "pong", items
    events = [item.split(" ") for item in items[2:-1]]
    assert all(word == "event" for word, _, _ in events), items
    assert [int(seq) for _, seq, _ in events] == list(range(int(events[0][1]), int(events[0][1]) + len(events)))
    assert events[-1][2] == "workflow_completed", items


async def test_a_browser_event_source_resumes_instead_of_replaying(live: Live, chromium: str, tmp_path: Path) -> None:
    with PageServer() as page:
        app = await live.start(cors_allowed_origins=page.origin)
        gate = live.runner.gate("design")
        session_id = await live.submit()
        await asyncio.wait_for(live.runner.started_event(session_id, "design").wait(), RECEIVE_SECONDS)
        url = f"http://127.0.0.1:{live.port}/workflow-events/{session_id}"
        page.page = (EVENT_SOURCE_PAGE % {"url": json.dumps(url)}).encode()
        status, items = await page.browse(chromium, tmp_path / "chromium", gate)
    envoy_log = app._envoy.log_path  # type: ignore[union-attr]
    await live.close()  # Envoy writes its access log out as it exits
    # Every event once, in order, each with its sequence as the SSE id; then the stream ended, the browser
    # reconnected with Last-Event-ID, and the 204 it got stopped it (no replay, no endless reconnects).
    assert status == "closed", items
    assert items[-1] == "reconnecting", items
    events = [item.split(" ") for item in items[:-1]]
    assert [int(seq) for _, _, seq, _ in events] == list(range(1, len(events) + 1)), items
    assert all(word == "event" and last_id == seq for word, last_id, seq, _ in events), items
    assert events[-1][3] == "workflow_completed", items
    logged = [json.loads(line) for line in envoy_log.read_text().splitlines() if line.startswith("{")]
    watches = [(w["method"], w["status"]) for w in logged if w.get("path") == f"/workflow-events/{session_id}"]
    assert watches == [("GET", 200), ("GET", 204)], watches


async def test_an_offer_without_the_bearer_subprotocol_is_refused_and_never_logged(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await live.start(auth=True)
    token = hs256(tenant="tenant-a")
    session_id = await live.submit(token)
    # A client that sends the token as the only subprotocol, or under another name: aiohttp would log the offer.
    for offer in (token, f"Bearer, {token}", f"access_token, {token}"):
        refused = await handshake(live, f"/ws/{session_id}", {"sec-websocket-protocol": offer})
        assert_error(refused, 401, "TOKEN_MALFORMED")
    assert token.rsplit(".", 1)[1] not in caplog.text


async def test_a_socket_whose_session_ended_gives_its_stream_slot_back(
    live: Live, session: aiohttp.ClientSession
) -> None:
    await live.start(auth=True, max_watch_streams_per_tenant=1)
    token = hs256(tenant="tenant-a")
    session_id, stored = await live.finished(token)
    async with session.ws_connect(live.ws_url(session_id, "?after_sequence=0"), protocols=("bearer", token)) as ws:
        assert sequences(await events_until_terminal(ws)) == sequences(stored)
        # Still open for the guide's pings, but no longer a watch: another stream of the tenant is admitted.
        await ws.send_str("ping")
        assert await receive(ws) == "pong"
        async with live.http() as http:
            again = await ndjson(http, f"/workflow-events/{session_id}?after_sequence=0", headers=bearer(token))
        assert sequences(again) == sequences(stored)

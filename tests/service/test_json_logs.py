"""The logs an operator collects: `orchestrator serve` writes one JSON object per line on stderr, with the request
id of the call and the session id, inside workflow execution too; the level is configurable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service import logs
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.port: int | None = None
        self._listening = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if self.port is None and (found := re.search(r"serving gRPC.*? on [^ ]+:(\d+)", line)):
                self.port = int(found.group(1))
                self._listening.set()
        self._listening.set()  # exited before listening: the test fails on port None with the log

    async def listening(self) -> int:
        await asyncio.wait_for(self._listening.wait(), 60)
        assert self.port is not None, "\n".join(self.lines)
        return self.port

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            await asyncio.wait_for(self._reader, 10)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_AUTH__ENABLED"] = "false"  # local use; tests/service/test_auth.py covers auth
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "serve",
        "--no-envoy",
        "--grpc-port=0",
        "--metrics-port=0",
        f"--data-dir={tmp_path / 'data'}",
        "--replica-id=logs-test",
        "--queue-poll-seconds=0.02",
        "--log-level=INFO",
        "--log-format=json",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Server(process)
    try:
        yield running
    finally:
        with contextlib.suppress(ProcessLookupError):
            await running.stop()


async def test_serve_logs_json_lines_with_request_and_session_ids(server: Server) -> None:
    port = await server.listening()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        submitted = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(requirements="a clock", workflow_type="design"),
            metadata=(("x-request-id", "logs-rid-1"),),
        )
        session_id = submitted.session_id
        async for event in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id), timeout=60):
            last = event.type
        assert last == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetWorkflowStatus(
                pb.GetWorkflowStatusRequest(session_id="no-such-session"), metadata=(("x-request-id", "logs-rid-2"),)
            )
    await server.stop()
    assert server.process.returncode == 0, "\n".join(server.lines)

    entries: list[dict[str, Any]] = []
    for line in server.lines:
        entry = json.loads(line)  # every line is one JSON object: nothing else reaches stderr
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        assert entry["level"] in ("INFO", "WARNING", "ERROR"), line  # INFO configured: no DEBUG
        entries.append(entry)

    # Inside the workflow's execution (the engine's DBOS body and the agents under it) the session id is set.
    phase_logs = [e for e in entries if e["logger"].startswith("orchestrator.agents") and session_id in e["message"]]
    assert phase_logs, entries
    assert all(e.get("session_id") == session_id for e in phase_logs), phase_logs
    # A request's log lines carry its request id (from x-request-id) and the session it is about.
    not_found = [e for e in entries if "NOT_FOUND" in e["message"]]
    assert not_found and not_found[0]["request_id"] == "logs-rid-2"
    assert not_found[0]["session_id"] == "no-such-session"
    assert any(e["message"] == "shutting down" for e in entries)


def test_the_log_level_is_configurable(capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("WARNING", "json")
        logging.getLogger("tests.level").info("not shown")
        logging.getLogger("tests.level").warning("shown %s", "with args")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert [(e["level"], e["message"]) for e in lines] == [("WARNING", "shown with args")]

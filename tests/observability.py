"""Helpers of the metrics, Prometheus and deploy tests: scrape and parse /metrics, find Prometheus's tools, run
a workflow to its end, and wait on conditions with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
T = TypeVar("T")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def require_tool(name: str) -> str:
    """The path of a command-line tool. Missing: a skip on a developer machine, a failure in CI (where
    scripts/test.sh installs it), so that a green CI never hides a missing install step."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus; scripts/test.sh does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


async def scrape(app: App) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float | None:
    """The value of the series `name` with exactly these labels; None when it does not exist."""
    return parsed.get((name, frozenset(labels.items())))


def total(parsed: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include these."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in parsed.items() if n == name and wanted <= series)


def exported_names(text: str) -> set[str]:
    """Names of every sample, and of every declared metric (a labelled metric has no sample before its first
    observation, but its HELP and TYPE lines are there from the start)."""
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    return declared | {name for name, _ in samples(text)}


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.1) -> T:
    """Polls `check` until it returns something other than None or False, or fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def run_workflow(app: App, workflow_type: str = "full", request_id: str = "") -> tuple[str, list[str]]:
    """Submits over gRPC and watches to the end: (session id, event types in order)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        submitted = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(
                requirements="A todo list with items that can be added and completed",
                workflow_type=workflow_type,
                priority=enums.PRIORITY_NORMAL,
            ),
            metadata=(("x-request-id", request_id),) if request_id else (),
        )
        types = []
        async for event in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=submitted.session_id), timeout=90):
            if event.type != enums.EVENT_TYPE_HEARTBEAT:
                types.append(enums.EventType.Name(event.type))
        return submitted.session_id, types


def labels_of(parsed: Samples, name: str) -> list[Mapping[str, str]]:
    return [dict(series) for n, series in parsed if n == name]


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (Linux /proc): Prometheus has no way to report the port it picked for :0."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports

"""Shared fixtures: real servers on loopback port 0, real SQLite files, and a kill switch for model hosts."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from orchestrator.settings import Settings
from service.app import App
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.runners import ScriptedRunner

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    """No test reaches a model host (or anything) off this machine."""
    if self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _kill_switch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    yield


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "grpc_port": 0,
        "metrics_port": 0,
        "http_port": 0,
        "envoy_admin_port": 0,
        "envoy": False,
        "replica_id": "test-replica",
        "queue_poll_seconds": 0.02,
        "watch_heartbeat_seconds": 0.5,
        "remote_poll_seconds": 0.1,
        "log_format": "text",
        # Auth is on by default; these tests run without it (tests/service/test_auth.py turns it on), and they
        # poll and submit fast from one address, so the per-address rate limits are far above the defaults.
        "auth": {"enabled": False},
        "read_rate_per_second": 10_000,
        "read_burst": 10_000,
        "write_rate_per_second": 10_000,
        "write_burst": 10_000,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
async def app(settings: Settings, runner: ScriptedRunner) -> AsyncIterator[App]:
    application = App(settings, runner=runner)
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0.5)


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.OrchestratorServiceStub:
    return pb_grpc.OrchestratorServiceStub(channel)


def postgres_url() -> str:
    return os.environ.get("ORCHESTRATOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

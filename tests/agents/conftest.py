"""Fixtures of the agent tests, and a second kill switch: no model client may point off this machine."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from orchestrator.agents import AgentSettings, PhaseRunner
from orchestrator.agents.providers import ProviderClients
from tests.agents.fake_openai import FakeOpenAI


def _require_loopback(url: str | None, provider: str) -> None:
    host = urlsplit(url).hostname if url else None
    try:
        loopback = host is not None and (host == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        loopback = False
    if not loopback:
        raise RuntimeError(f"kill switch: tests may not reach a real {provider} model host ({host or 'default'})")


@pytest.fixture(autouse=True)
def _model_host_kill_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse to build a provider client for any non-loopback base URL (the root conftest also guards sockets)."""
    real_openai, real_anthropic = ProviderClients.openai_client, ProviderClients.anthropic_client

    def openai_client(self: ProviderClients) -> Any:
        _require_loopback(self._settings.openai_base_url, "OpenAI")
        return real_openai(self)

    def anthropic_client(self: ProviderClients) -> Any:
        _require_loopback(self._settings.anthropic_base_url, "Anthropic")
        return real_anthropic(self)

    monkeypatch.setattr(ProviderClients, "openai_client", openai_client)
    monkeypatch.setattr(ProviderClients, "anthropic_client", anthropic_client)
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(key, raising=False)


class SleepRecorder:
    """Stands in for asyncio.sleep in the retry backoff: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def make_runner(sleeps: SleepRecorder) -> AsyncIterator[Callable[..., PhaseRunner]]:
    runners: list[PhaseRunner] = []

    def make(**overrides: Any) -> PhaseRunner:
        runner = PhaseRunner(AgentSettings(**overrides), sleep=sleeps)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        await runner.aclose()


@pytest.fixture
def fake_openai() -> Iterator[Callable[..., FakeOpenAI]]:
    servers: list[FakeOpenAI] = []

    def start(*replies: Any) -> FakeOpenAI:
        server = FakeOpenAI(*replies).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)

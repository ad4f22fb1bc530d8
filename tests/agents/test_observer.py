"""The agents' observer hooks (what the service turns into metrics): model attempts with their outcome and
latency, retries, metered tokens and cost, and sandbox runs, against a real local model HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic_ai.exceptions import ModelAPIError, ModelHTTPError

from orchestrator.agents import AgentSettings, ModelPrice, PhaseFailed, PhaseRequest, PhaseRunner
from orchestrator.agents.observer import MODEL_OUTCOMES, SANDBOX_OUTCOMES
from orchestrator.agents.providers import failure_kind
from orchestrator.agents.runner import _sandbox_outcome
from orchestrator.sandbox import TestRunReport
from tests.agents.conftest import SleepRecorder
from tests.agents.fake_openai import ANALYST_OUTPUT, FakeOpenAI, Reply, completion, error

pytestmark = pytest.mark.timeout(30)

MODEL = "openai:fake-model"


@dataclass
class Recorder:
    requests: list[tuple[str, str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    retries: list[tuple[str, str]] = field(default_factory=list)
    usage: list[tuple[str, int, int, float]] = field(default_factory=list)
    sandbox: list[str] = field(default_factory=list)

    def model_request(self, model: str, outcome: str, seconds: float) -> None:
        assert outcome in MODEL_OUTCOMES
        self.requests.append((model, outcome))
        self.seconds.append(seconds)

    def model_retry(self, model: str, reason: str) -> None:
        self.retries.append((model, reason))

    def model_usage(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        self.usage.append((model, input_tokens, output_tokens, cost_usd))

    def sandbox_run(self, outcome: str, seconds: float) -> None:
        assert outcome in SANDBOX_OUTCOMES
        self.sandbox.append(outcome)


@pytest.fixture
async def observed(sleeps: SleepRecorder) -> AsyncIterator[tuple[Recorder, Callable[..., PhaseRunner]]]:
    recorder = Recorder()
    runners: list[PhaseRunner] = []

    def make(**overrides: Any) -> PhaseRunner:
        runner = PhaseRunner(AgentSettings(**overrides), sleep=sleeps, observer=recorder)
        runners.append(runner)
        return runner

    yield recorder, make
    for runner in runners:
        await runner.aclose()


def analyst_request(**configuration: Any) -> PhaseRequest:
    return PhaseRequest(
        session_id="s-1",
        workflow_type="full",
        phase="requirements",
        role="analyst",
        requirements="A todo list library.",
        configuration={"model": MODEL, **configuration},
    )


def ok(request: dict[str, Any]) -> Reply:
    return completion(request, ANALYST_OUTPUT, prompt_tokens=120, completion_tokens=30)


async def test_attempts_retries_tokens_and_cost_are_reported(
    observed: tuple[Recorder, Callable[..., PhaseRunner]], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    recorder, make = observed
    server = fake_openai(lambda r: error(429, "slow down"), lambda r: error(503, "busy"), ok)
    runner = make(
        openai_base_url=server.base_url,
        openai_api_key="sk-test",
        max_retries=2,
        prices={MODEL: ModelPrice(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)},
    )
    await runner.run(analyst_request())
    assert recorder.requests == [(MODEL, "rate_limited"), (MODEL, "server_error"), (MODEL, "ok")]
    assert all(s >= 0 for s in recorder.seconds)
    assert recorder.retries == [(MODEL, "rate_limited"), (MODEL, "server_error")]
    assert recorder.usage == [(MODEL, 120, 30, pytest.approx((120 * 1.0 + 30 * 2.0) / 1_000_000))]


async def test_a_refused_request_is_an_attempt_but_no_retry(
    observed: tuple[Recorder, Callable[..., PhaseRunner]], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    recorder, make = observed
    server = fake_openai(lambda r: error(401, "bad key"))
    runner = make(openai_base_url=server.base_url, openai_api_key="sk-test")
    with pytest.raises(PhaseFailed):
        await runner.run(analyst_request())
    assert recorder.requests == [(MODEL, "client_error")]
    assert recorder.retries == [] and recorder.usage == []


async def test_the_offline_model_is_observed_too(observed: tuple[Recorder, Callable[..., PhaseRunner]]) -> None:
    recorder, make = observed
    await make().run(analyst_request(model="offline"))
    assert recorder.requests == [("offline", "ok")]
    assert len(recorder.usage) == 1 and recorder.usage[0][0] == "offline" and recorder.usage[0][3] == 0


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ModelHTTPError(429, "m"), "rate_limited"),
        (ModelHTTPError(408, "m"), "timeout"),
        (ModelHTTPError(500, "m"), "server_error"),
        (ModelHTTPError(404, "m"), "client_error"),
        (TimeoutError(), "timeout"),
        (ModelAPIError("m", "x"), "client_error"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_failure_kinds(exc: BaseException, kind: str) -> None:
    assert failure_kind(exc) == kind


@pytest.mark.parametrize(
    ("report", "outcome"),
    [
        ({"passed": 3, "failed": 0, "errors": 0, "success": True, "timed_out": False}, "passed"),
        ({"passed": 2, "failed": 1, "errors": 0, "success": False, "timed_out": False}, "failed"),
        ({"passed": 0, "failed": 0, "errors": 1, "success": False, "timed_out": False}, "error"),
        ({"passed": 0, "failed": 0, "errors": 1, "success": False, "timed_out": True}, "timeout"),
    ],
)
def test_sandbox_outcomes(report: dict[str, Any], outcome: str) -> None:
    full = TestRunReport(output="", exit_code=0, duration_s=0.1, isolation="none", **report)
    assert _sandbox_outcome(full) == outcome

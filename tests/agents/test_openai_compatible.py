"""An OpenAI-compatible model through a real local HTTP server: retries, invalid output, budget, cancellation."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.agents import (
    Budget,
    BudgetExceeded,
    ModelPrice,
    PhaseFailed,
    PhaseRequest,
    PhaseRunner,
)
from tests.agents.conftest import SleepRecorder
from tests.agents.fake_openai import ANALYST_OUTPUT, FakeOpenAI, Reply, anthropic_message, completion, error

pytestmark = pytest.mark.timeout(30)

MODEL = "openai:fake-model"
API_KEY = "sk-test-secret-123"


def analyst_request(**kw: Any) -> PhaseRequest:
    values: dict[str, Any] = {
        "session_id": "s-1",
        "workflow_type": "full",
        "phase": "analysis",
        "role": "analyst",
        "requirements": "A todo list library.",
        "configuration": {"model": MODEL},
        "inputs": {},
        **kw,
    }
    return PhaseRequest(**values)


def ok(request: dict[str, Any]) -> Reply:
    return completion(request, ANALYST_OUTPUT, prompt_tokens=120, completion_tokens=30)


def runner_for(make_runner: Callable[..., PhaseRunner], server: FakeOpenAI, **overrides: Any) -> PhaseRunner:
    values: dict[str, Any] = {
        "openai_base_url": server.base_url,
        "openai_api_key": API_KEY,
        "backoff_base_s": 0.5,
        "backoff_max_s": 4.0,
        "max_retries": 2,
        **overrides,
    }
    return make_runner(**values)


async def test_structured_output_usage_and_cost_from_a_real_http_endpoint(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(ok)
    runner = runner_for(
        make_runner, server, prices={MODEL: ModelPrice(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)}
    )
    result = await runner.run(analyst_request())
    assert result.output == ANALYST_OUTPUT
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.requests) == (120, 30, 1)
    assert result.usage.cost_usd == pytest.approx((120 * 1.0 + 30 * 2.0) / 1_000_000)
    assert result.usage.model == MODEL
    assert server.requests[0]["model"] == "fake-model"
    assert server.headers[0]["authorization"] == f"Bearer {API_KEY}"
    assert "analyst" in str(server.requests[0]["messages"][0]["content"])  # the role's system prompt


async def test_rate_limit_then_success_is_retried_with_backoff(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI], sleeps: SleepRecorder
) -> None:
    server = fake_openai(lambda r: error(429, "slow down"), lambda r: error(503, "busy"), ok)
    result = await runner_for(make_runner, server).run(analyst_request())
    assert result.output == ANALYST_OUTPUT
    assert server.chat_requests == 3
    assert len(sleeps.delays) == 2
    assert 0.25 <= sleeps.delays[0] <= 0.5  # base 0.5 with jitter in the upper half
    assert 0.5 <= sleeps.delays[1] <= 1.0  # doubled
    assert result.usage.requests == 1  # only answered requests are metered


async def test_retry_after_header_is_honoured_up_to_the_cap(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI], sleeps: SleepRecorder
) -> None:
    server = fake_openai(lambda r: error(429, "slow down", headers={"Retry-After": "60"}), ok)
    await runner_for(make_runner, server).run(analyst_request())
    assert sleeps.delays == [4.0]  # backoff_max_s


async def test_persistent_rate_limit_fails_after_the_retries(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI], sleeps: SleepRecorder
) -> None:
    server = fake_openai(lambda r: error(429, f"rate limited for key {API_KEY}"))
    with pytest.raises(PhaseFailed) as caught:
        await runner_for(make_runner, server).run(analyst_request())
    assert str(caught.value) == f"model {MODEL} failed after 3 attempt(s): HTTP 429 (rate limited)"
    assert server.chat_requests == 3 and len(sleeps.delays) == 2


async def test_authentication_error_is_not_retried_and_leaks_no_secret(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI], sleeps: SleepRecorder
) -> None:
    server = fake_openai(lambda r: error(401, f"Incorrect API key provided: {API_KEY}"))
    with pytest.raises(PhaseFailed, match=re.escape("HTTP 401 (authentication failed: check the API key)")) as caught:
        await runner_for(make_runner, server).run(analyst_request())
    assert API_KEY not in str(caught.value) and caught.value.__cause__ is None
    assert server.chat_requests == 1 and sleeps.delays == []


async def test_invalid_structured_output_is_retried_then_fails_clearly(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    incomplete = {"summary": "only a summary"}
    server = fake_openai(lambda r: completion(r, incomplete))
    with pytest.raises(PhaseFailed) as caught:
        await runner_for(make_runner, server, output_retries=2).run(analyst_request())
    message = str(caught.value)
    assert message.startswith(
        f"the analyst model {MODEL} did not return valid structured output in 3 request(s) (up to 3 allowed)"
    )
    assert "functional_requirements: Field required" in message
    assert server.chat_requests == 3
    # Each retry told the model what was wrong.
    assert "functional_requirements" in str(server.requests[1]["messages"])
    assert caught.value.usage is not None and caught.value.usage.requests == 3


async def test_invalid_output_once_then_valid_succeeds(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(lambda r: completion(r, {"summary": 3}), ok)
    result = await runner_for(make_runner, server).run(analyst_request())
    assert result.output == ANALYST_OUTPUT and result.usage.requests == 2


async def test_token_budget_overrun_raises_budget_exceeded(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(lambda r: completion(r, ANALYST_OUTPUT, prompt_tokens=5_000, completion_tokens=500))
    with pytest.raises(BudgetExceeded, match="token budget exceeded: 1000 tokens were left") as caught:
        await runner_for(make_runner, server).run(analyst_request(budget_remaining=Budget(tokens=1_000)))
    assert caught.value.usage is not None and caught.value.usage.input_tokens == 5_000


async def test_cost_budget_overrun_raises_budget_exceeded(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(ok)
    prices = {MODEL: ModelPrice(input_usd_per_mtok=100.0, output_usd_per_mtok=100.0)}  # 150 tokens: $0.015
    with pytest.raises(BudgetExceeded, match=re.escape("cost budget exceeded: $0.0100 was left")):
        await runner_for(make_runner, server, prices=prices).run(analyst_request(budget_remaining=Budget(usd=0.01)))


async def test_per_call_timeout_is_retried_then_fails(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(lambda r: Reply(hold=True))
    runner = runner_for(make_runner, server, request_timeout_s=0.3, max_retries=1)
    with pytest.raises(PhaseFailed, match=re.escape("failed after 2 attempt(s): no answer within 0.3s")):
        await runner.run(analyst_request())
    assert server.chat_requests == 2


async def test_cancellation_propagates_and_closes_the_connection(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(lambda r: Reply(hold=True))
    task = asyncio.create_task(runner_for(make_runner, server).run(analyst_request()))
    assert await asyncio.to_thread(server.started.wait, 10), "the model call never reached the server"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(server.disconnected.wait, 10), "the server never saw the connection close"
    assert server.chat_requests == 1


async def test_requests_in_flight_are_capped_per_provider(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(lambda r: Reply(hold_seconds=0.1, body=ok(r).body))
    runner = runner_for(make_runner, server, provider_concurrency=1)
    started = time.monotonic()
    results = await asyncio.gather(*(runner.run(analyst_request(session_id=f"s-{i}")) for i in range(3)))
    assert [r.output for r in results] == [ANALYST_OUTPUT] * 3
    assert server.max_in_flight == 1
    assert time.monotonic() - started >= 0.3


async def test_check_reports_the_endpoint_without_secrets(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    server = fake_openai(ok)
    ok_, message = await runner_for(make_runner, server, default_model=MODEL).check()
    assert ok_ is True and message == f"{MODEL}: OpenAI-compatible endpoint {server.base_url} answers"
    assert runner_for(make_runner, server, default_model=MODEL).describe_model({}) == MODEL

    closed = fake_openai(ok)
    url = closed.base_url
    closed.__exit__(None, None, None)
    down = make_runner(default_model=MODEL, openai_base_url=url, openai_api_key=API_KEY)
    ok_, message = await down.check()
    assert ok_ is False and "unreachable or refusing" in message and API_KEY not in message


async def test_kill_switch_refuses_a_real_model_host(make_runner: Callable[..., PhaseRunner]) -> None:
    runner = make_runner(openai_api_key=API_KEY)  # no base URL: api.openai.com
    with pytest.raises(RuntimeError, match="kill switch"):
        await runner.run(analyst_request())


async def test_anthropic_model_through_a_real_http_endpoint(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI], sleeps: SleepRecorder
) -> None:
    server = fake_openai(lambda r: error(529, "overloaded"), lambda r: anthropic_message(r, ANALYST_OUTPUT))
    runner = make_runner(
        default_model="anthropic:claude-fake",
        anthropic_base_url=server.root_url,
        anthropic_api_key=API_KEY,
        backoff_base_s=0.5,
    )
    result = await runner.run(analyst_request(configuration={}))
    assert result.output == ANALYST_OUTPUT
    assert result.usage.model == "anthropic:claude-fake" and result.usage.input_tokens == 40
    assert server.chat_requests == 2 and len(sleeps.delays) == 1  # the 529 (overloaded) was retried
    assert server.headers[-1]["authorization"] == f"Bearer {API_KEY}"
    assert server.headers[-1]["x-stainless-retry-count"] == "0"  # the SDK does not retry on its own


async def test_tester_fix_loop_revises_the_code_with_the_engineer_model(
    make_runner: Callable[..., PhaseRunner], fake_openai: Callable[..., FakeOpenAI]
) -> None:
    buggy = {"path": "calc/__init__.py", "language": "python", "content": "def add(a, b):\n    return a - b\n"}
    fixed = {**buggy, "content": "def add(a, b):\n    return a + b\n"}
    tests = {
        "path": "tests/test_calc.py",
        "language": "python",
        "content": "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n",
    }
    server = fake_openai(
        lambda r: completion(r, {"test_files": [tests], "notes": "one test"}),
        lambda r: completion(r, {"files": [fixed], "notes": "add subtracted"}),
    )
    request = analyst_request(phase="tests", role="tester", inputs={"implementation": {"files": [buggy], "notes": ""}})
    result = await runner_for(make_runner, server).run(request)
    report = result.output["report"]
    assert report["success"] is True and report["passed"] == 1 and report["iterations"] == 2
    assert result.output["files"] == [fixed] and result.output["test_files"] == [tests]
    assert server.chat_requests == 2 and result.usage.requests == 2
    fix_request = str(server.requests[1]["messages"])
    assert "assert -1 == 3" in fix_request and "engineer" in fix_request  # the failure went to the engineer

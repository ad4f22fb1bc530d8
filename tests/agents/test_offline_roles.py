"""Every role on the offline model: its output schema, honest labels, the full chain through the sandbox."""

from __future__ import annotations

import ast
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.agents import (
    OFFLINE_HEALTH_MESSAGE,
    Budget,
    BudgetExceeded,
    PhaseFailed,
    PhaseRequest,
    PhaseResult,
    PhaseRunner,
    PhaseUsage,
)

pytestmark = pytest.mark.timeout(60)

REQUIREMENTS = "Build a small library for managing todo items.\n- add items with tags\n- search items by text"
CHAIN = [
    ("analysis", "analyst"),
    ("design", "architect"),
    ("implementation", "engineer"),
    ("tests", "tester"),
    ("review", "reviewer"),
    ("docs", "documenter"),
]


def request(phase: str, role: str, inputs: dict[str, dict[str, Any]] | None = None, **kw: Any) -> PhaseRequest:
    values: dict[str, Any] = {
        "session_id": "s-1",
        "workflow_type": "full",
        "phase": phase,
        "role": role,
        "requirements": REQUIREMENTS,
        "configuration": {},
        "inputs": inputs or {},
        **kw,
    }
    return PhaseRequest(**values)


async def run_chain(
    runner: PhaseRunner, upto: str, configuration: dict[str, Any] | None = None
) -> dict[str, PhaseResult]:
    results: dict[str, PhaseResult] = {}
    for phase, role in CHAIN:
        inputs = {name: result.output for name, result in results.items()}
        results[phase] = await runner.run(request(phase, role, inputs, configuration=configuration or {}))
        if role == upto:
            break
    return results


def assert_files(files: Any) -> None:
    assert isinstance(files, list) and files
    for item in files:
        assert set(item) == {"path", "language", "content"}
        assert all(isinstance(item[key], str) for key in item)


def assert_shape(role: str, output: dict[str, Any]) -> None:
    if role == "analyst":
        assert set(output) == {
            "summary",
            "functional_requirements",
            "non_functional_requirements",
            "acceptance_criteria",
        }
        assert isinstance(output["summary"], str)
        for key in ("functional_requirements", "non_functional_requirements", "acceptance_criteria"):
            assert output[key] and all(isinstance(item, str) for item in output[key])
    elif role == "architect":
        assert set(output) == {"overview", "components", "files", "decisions"}
        assert all(set(c) == {"name", "responsibility"} for c in output["components"])
        assert output["files"] and all(isinstance(path, str) for path in output["files"])
        assert all(isinstance(item, str) for item in output["decisions"])
    elif role == "engineer":
        assert set(output) == {"files", "notes"}
        assert_files(output["files"])
        assert isinstance(output["notes"], str)
    elif role == "tester":
        assert set(output) == {"files", "test_files", "report"}
        assert_files(output["files"])
        assert_files(output["test_files"])
        report = output["report"]
        assert set(report) == {
            "passed", "failed", "errors", "success", "output", "iterations", "not_run_reason", "summary"
        }  # fmt: skip
        assert all(isinstance(report[key], int) for key in ("passed", "failed", "errors", "iterations"))
        assert isinstance(report["success"], bool) and isinstance(report["output"], str)
        # The tests ran and passed, and the phase's output says so in words.
        assert report["not_run_reason"] == "" and report["summary"] == f"{report['passed']} generated tests passed"
    elif role == "reviewer":
        assert set(output) == {"summary", "approved", "findings"}
        assert isinstance(output["approved"], bool)
        for finding in output["findings"]:
            assert set(finding) == {"severity", "path", "message"}
            assert finding["severity"] in {"info", "minor", "major", "critical"}
    elif role == "documenter":
        assert set(output) == {"documentation"}
        assert output["documentation"].startswith("# ")
    else:  # pragma: no cover
        raise AssertionError(role)


@pytest.mark.parametrize("role", [role for _, role in CHAIN])
async def test_each_role_returns_its_schema_on_the_offline_model(
    make_runner: Callable[..., PhaseRunner], role: str
) -> None:
    results = await run_chain(make_runner(), upto=role)
    result = results[next(phase for phase, r in CHAIN if r == role)]
    assert_shape(role, result.output)
    assert result.usage.model == "offline"
    assert result.usage.cost_usd == 0
    assert result.usage.requests >= 1
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0


async def test_full_offline_chain_writes_a_package_whose_tests_pass_in_the_sandbox(
    make_runner: Callable[..., PhaseRunner],
) -> None:
    results = await run_chain(make_runner(), upto="tester")
    code = results["implementation"].output["files"]
    paths = [item["path"] for item in code]
    assert paths == ["todo_items/__init__.py", "todo_items/core.py"]  # named after the requirements
    package_doc = ast.get_docstring(ast.parse(code[0]["content"]))
    assert package_doc is not None and "managing todo items" in package_doc
    assert "offline scaffold" in package_doc
    assert results["design"].output["files"][:2] == paths

    tests = results["tests"].output
    report = tests["report"]
    assert report["success"] is True, report["output"]
    assert report["passed"] >= 8 and report["failed"] == 0 and report["errors"] == 0
    assert report["iterations"] == 1
    assert tests["files"] == code
    assert [f["path"] for f in tests["test_files"]] == ["tests/test_todo_items.py"]


async def test_offline_outputs_say_they_are_the_offline_scaffold(make_runner: Callable[..., PhaseRunner]) -> None:
    results = await run_chain(make_runner(), upto="documenter")
    assert "offline scaffold" in results["analysis"].output["summary"]
    assert "real model" in results["analysis"].output["summary"]
    review = results["review"].output
    assert review["approved"] is True
    assert any("Offline review" in f["message"] and "real model" in f["message"] for f in review["findings"])
    documentation = results["docs"].output["documentation"]
    assert "offline scaffold" in documentation
    assert "## Test results" in documentation and "0 failed" in documentation


async def test_simulated_failing_test_is_reported_as_failing_after_the_fix_loop(
    make_runner: Callable[..., PhaseRunner],
) -> None:
    results = await run_chain(make_runner(), upto="tester", configuration={"simulate_failing_test": True})
    tests = results["tests"]
    report = tests.output["report"]
    assert report["success"] is False
    assert report["failed"] == 1 and report["passed"] >= 8
    assert "test_deliberately_failing" in report["output"]
    assert report["iterations"] == 3  # the first run and max_fix_iterations=2 (the default) revisions
    assert tests.usage.requests == 3  # the tester's call and two engineer revisions


async def test_max_fix_iterations_bounds_the_fix_loop(make_runner: Callable[..., PhaseRunner]) -> None:
    configuration = {"simulate_failing_test": True, "max_fix_iterations": 0}
    results = await run_chain(make_runner(), upto="tester", configuration=configuration)
    assert results["tests"].output["report"]["iterations"] == 1
    assert results["tests"].output["report"]["failed"] == 1


async def test_bugfix_engineer_returns_the_submitted_files_and_says_it_cannot_fix(
    make_runner: Callable[..., PhaseRunner],
) -> None:
    configuration = {"code": {"calc.py": "def add(a, b):\n    return a - b\n"}, "failing_behaviour": "add(1, 2) is -1"}
    result = await make_runner().run(request("fix", "engineer", workflow_type="bugfix", configuration=configuration))
    assert_shape("engineer", result.output)
    assert result.output["files"] == [
        {"path": "calc.py", "language": "python", "content": configuration["code"]["calc.py"]}
    ]
    assert "cannot fix" in result.output["notes"] and "add(1, 2) is -1" in result.output["notes"]


async def test_review_workflow_reviews_configuration_code(make_runner: Callable[..., PhaseRunner]) -> None:
    code = [{"path": "bad.py", "content": "try:\n    x = eval('1')\nexcept:\n    pass\n"}]
    result = await make_runner().run(
        request("review", "reviewer", workflow_type="review", configuration={"code": code})
    )
    assert_shape("reviewer", result.output)
    assert result.output["approved"] is False
    messages = {f["message"] for f in result.output["findings"] if f["path"] == "bad.py"}
    assert any("bare 'except:'" in m for m in messages) and any("eval()" in m for m in messages)


async def test_tester_without_code_fails_with_a_clear_message(make_runner: Callable[..., PhaseRunner]) -> None:
    with pytest.raises(PhaseFailed, match="no code to work on"):
        await make_runner().run(request("tests", "tester"))


async def test_token_budget_exhausted_before_the_call(make_runner: Callable[..., PhaseRunner]) -> None:
    with pytest.raises(BudgetExceeded, match="token budget exceeded") as caught:
        await make_runner().run(request("analysis", "analyst", budget_remaining=Budget(tokens=0)))
    assert caught.value.usage == PhaseUsage(input_tokens=0, output_tokens=0, requests=0, cost_usd=0.0, model="offline")


async def test_token_budget_overrun_during_the_call(make_runner: Callable[..., PhaseRunner]) -> None:
    with pytest.raises(BudgetExceeded, match="token budget exceeded: 20 tokens were left") as caught:
        await make_runner().run(request("analysis", "analyst", budget_remaining=Budget(tokens=20, usd=5.0)))
    assert caught.value.usage is not None and caught.value.usage.requests == 1
    assert caught.value.code == "BUDGET_EXCEEDED"


async def test_unknown_role_and_model_fail_clearly(make_runner: Callable[..., PhaseRunner]) -> None:
    runner = make_runner()
    with pytest.raises(PhaseFailed, match="unknown agent role 'poet'"):
        await runner.run(request("x", "poet"))
    with pytest.raises(PhaseFailed, match="unknown model 'gpt-5'"):
        await runner.run(request("analysis", "analyst", configuration={"model": "gpt-5"}))


async def test_check_and_describe_model_on_the_offline_default(make_runner: Callable[..., PhaseRunner]) -> None:
    runner = make_runner()
    assert await runner.check() == (True, OFFLINE_HEALTH_MESSAGE)
    assert runner.describe_model({}) == "offline"
    assert runner.describe_model({"model": "openai:gpt-4o-mini"}) == "openai:gpt-4o-mini"
    assert runner.model_for("engineer", {"model": "offline", "models": {"engineer": "anthropic:claude-x"}}) == (
        "anthropic:claude-x"
    )


def test_typed_errors_survive_pickling_with_their_usage() -> None:
    usage = PhaseUsage(input_tokens=1, output_tokens=2, requests=1, cost_usd=0.0, model="offline")
    error = pickle.loads(pickle.dumps(PhaseFailed("the model gave up", usage=usage)))
    assert isinstance(error, PhaseFailed) and str(error) == "the model gave up" and error.usage == usage


@pytest.mark.parametrize("mode", ["native", "prompted"])
async def test_offline_model_serves_every_output_mode(make_runner: Callable[..., PhaseRunner], mode: str) -> None:
    result = await make_runner(output_mode=mode).run(request("analysis", "analyst"))
    assert_shape("analyst", result.output)


async def test_offline_bugfix_chain_does_not_claim_the_bug_is_fixed(make_runner: Callable[..., PhaseRunner]) -> None:
    runner = make_runner()
    configuration = {
        "code": {"calc/__init__.py": "def add(a, b):\n    return a - b\n"},
        "failing_behaviour": "add is wrong",
    }
    common: dict[str, Any] = {"workflow_type": "bugfix", "configuration": configuration}
    fix = await runner.run(request("fix", "engineer", **common))
    verify = await runner.run(request("verify", "tester", {"fix": fix.output}, **common))
    report = verify.output["report"]
    assert report["passed"] == 1 and "1 skipped" in report["output"]  # imports pass; the bug is not checked
    review = await runner.run(request("review", "reviewer", {"fix": fix.output, "verify": verify.output}, **common))
    assert review.output["approved"] is False
    assert any("failing behaviour (add is wrong) is not addressed" in f["message"] for f in review.output["findings"])

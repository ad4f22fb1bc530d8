"""The phase runner: the one call the durable engine makes to have an agent role work on a workflow phase."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_ai import Agent, UsageLimits
from pydantic_ai.exceptions import ModelAPIError, UnexpectedModelBehavior, UsageLimitExceeded
from pydantic_ai.output import NativeOutput, PromptedOutput

from orchestrator.agents.errors import AgentError, BudgetExceeded, PhaseFailed
from orchestrator.agents.metering import Budget, PhaseUsage, UsageMeter
from orchestrator.agents.observer import AgentObserver, NullAgentObserver, SandboxOutcome
from orchestrator.agents.offline import OfflineTask, offline_model
from orchestrator.agents.prompting import (
    code_from_configuration,
    fix_prompt,
    latest_files,
    phase_prompt,
)
from orchestrator.agents.providers import ProviderClients, ResilientModel, describe_failure
from orchestrator.agents.roles import (
    ROLES,
    CodeFile,
    EngineerOutput,
    TesterOutput,
    TestReportOutput,
    TestSuiteOutput,
    load_prompt,
)
from orchestrator.agents.settings import ROLE_NAMES, AgentSettings, parse_model_id
from orchestrator.outcome import classify_test_report
from orchestrator.sandbox import SandboxError, TestRunReport, run_tests

logger = logging.getLogger(__name__)

# Typed errors are raised `from None`: their message is the whole story for a user, and a caller that walks
# `__cause__` to find the root error must find them, not the provider SDK's exception behind them. The cause is
# logged where it is converted.

__all__ = ["OFFLINE_HEALTH_MESSAGE", "PhaseRequest", "PhaseResult", "PhaseRunner"]

OFFLINE_HEALTH_MESSAGE = "offline model: deterministic scaffolds; configure a real model for real results"
DEFAULT_MAX_FIX_ITERATIONS = 2


class PhaseRequest(BaseModel):
    """One phase of one workflow, as the engine hands it over."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    workflow_type: str = Field(description="e.g. 'full'")
    phase: str = Field(description="The phase name, e.g. 'implementation'.")
    role: str = Field(description="analyst | architect | engineer | tester | reviewer | documenter")
    requirements: str
    configuration: dict[str, Any] = Field(default_factory=dict, description="Validated by the engine.")
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Outputs of the phases this one depends on, keyed by phase name."
    )
    budget_remaining: Budget | None = Field(default=None, description="Left for the workflow; None: unlimited.")


class PhaseResult(BaseModel):
    """The phase's output (JSON-serialisable, keys fixed per role) and what it consumed."""

    model_config = ConfigDict(frozen=True)

    output: dict[str, Any]
    usage: PhaseUsage


def _validation_summary(exc: BaseException | None) -> str:
    if isinstance(exc, ValidationError):
        problems = [f"{'.'.join(map(str, e['loc'])) or 'output'}: {e['msg']}" for e in exc.errors()[:3]]
        return "; ".join(problems)
    return ""


class PhaseRunner:
    """Builds the pydantic-ai agent for a phase's role and model, runs it, and returns its structured output.

    Use one PhaseRunner per event loop (its HTTP clients and semaphores bind to the loop that first uses them).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        observer: AgentObserver | None = None,
    ) -> None:
        self._settings = settings
        self._observer = observer or NullAgentObserver()
        self._clients = ProviderClients(settings)
        self._sleep = sleep  # injectable, so tests can observe backoff delays
        self._rng = rng or random.Random()

    # --- public API -----------------------------------------------------------------------------------------

    async def run(self, request: PhaseRequest) -> PhaseResult:
        """Run one phase. Raises PhaseFailed or BudgetExceeded; cancellation propagates and kills the sandbox."""
        if request.role not in ROLES:
            raise PhaseFailed(f"unknown agent role {request.role!r}: roles are {', '.join(ROLE_NAMES)}")
        model_id = self.model_for(request.role, request.configuration)
        meter = UsageMeter(self._settings, request.budget_remaining, model_id, self._observer)
        logger.info(
            "phase %s (%s) of session %s starts on %s", request.phase, request.role, request.session_id, model_id
        )
        try:
            meter.check()
            if request.role == "tester":
                output = await self._run_tester(request, model_id, meter)
            else:
                output = await self._run_single(request, model_id, meter)
        except AgentError as exc:
            if exc.usage is None:
                exc.usage = meter.usage()
            logger.info("phase %s of session %s failed: %s", request.phase, request.session_id, exc.message)
            raise
        usage = meter.usage()
        logger.info(
            "phase %s of session %s done: %d requests, %d tokens, $%.6f",
            request.phase,
            request.session_id,
            usage.requests,
            usage.input_tokens + usage.output_tokens,
            usage.cost_usd,
        )
        return PhaseResult(output=output, usage=usage)

    def model_for(self, role: str, configuration: dict[str, Any]) -> str:
        """The model id for `role`: configuration `models[role]`, configuration `model`, settings, default."""
        per_role = configuration.get("models")
        candidates: list[tuple[str, object]] = []
        if isinstance(per_role, dict) and role in per_role:
            candidates.append((f"configuration models.{role}", per_role[role]))
        if configuration.get("model") is not None:
            candidates.append(("configuration model", configuration["model"]))
        if candidates:
            source, value = candidates[0]
            if not isinstance(value, str):
                raise PhaseFailed(f"{source} must be a string such as 'offline' or 'openai:gpt-4o-mini'")
            try:
                parse_model_id(value)
            except ValueError as exc:
                raise PhaseFailed(f"{source}: {exc}") from None
            return value
        return self._settings.role_models.get(role, self._settings.default_model)

    def describe_model(self, configuration: dict[str, Any]) -> str:
        """The model serving a workflow with this configuration, e.g. 'offline' or 'openai:gpt-4o-mini'."""
        value = configuration.get("model")
        if isinstance(value, str):
            try:
                parse_model_id(value)
                return value
            except ValueError:
                pass
        return self._settings.default_model

    async def check(self) -> tuple[bool, str]:
        """Health of the configured model providers: (ok, message)."""
        configured = [self._settings.default_model, *self._settings.role_models.values()]
        real = sorted({model for model in configured if model != "offline"})
        if not real:
            return True, OFFLINE_HEALTH_MESSAGE
        results = [await self._clients.check(model) for model in real]
        return all(ok for ok, _ in results), "; ".join(message for _, message in results)

    async def aclose(self) -> None:
        """Close the HTTP clients of the model providers."""
        await self._clients.aclose()

    # --- phases ---------------------------------------------------------------------------------------------

    def _files_for(self, request: PhaseRequest) -> list[dict[str, Any]]:
        role = request.role
        if role in ("analyst", "architect"):
            return []
        if role == "engineer":  # code to fix, in workflow type bugfix
            return code_from_configuration(request.configuration)
        files = latest_files(request.inputs) or code_from_configuration(request.configuration)
        if not files and role in ("tester", "reviewer"):
            raise PhaseFailed(
                f"the {role} has no code to work on: no input phase produced files and the configuration has no 'code'"
            )
        return files

    def _task(self, request: PhaseRequest, files: list[dict[str, Any]]) -> OfflineTask:
        return OfflineTask(
            role=request.role,
            kind="phase",
            workflow_type=request.workflow_type,
            requirements=request.requirements,
            configuration=dict(request.configuration),
            inputs=dict(request.inputs),
            files=files,
        )

    def _prompt(self, request: PhaseRequest, files: list[dict[str, Any]]) -> str:
        return phase_prompt(
            role=request.role,
            phase=request.phase,
            workflow_type=request.workflow_type,
            requirements=request.requirements,
            configuration=request.configuration,
            inputs=request.inputs,
            files=files,
            limit=self._settings.max_context_chars,
        )

    async def _run_single(self, request: PhaseRequest, model_id: str, meter: UsageMeter) -> dict[str, Any]:
        files = self._files_for(request)
        result = await self._call(
            request.role, model_id, self._prompt(request, files), self._task(request, files), meter
        )
        return result.model_dump(mode="json")

    async def _run_tester(self, request: PhaseRequest, model_id: str, meter: UsageMeter) -> dict[str, Any]:
        files = self._files_for(request)
        suite = await self._call("tester", model_id, self._prompt(request, files), self._task(request, files), meter)
        assert isinstance(suite, TestSuiteOutput)
        test_files = [f.model_dump() for f in suite.test_files]
        max_fix = self._max_fix_iterations(request.configuration)
        engineer_model = self.model_for("engineer", request.configuration)
        iterations = 0
        while True:
            iterations += 1
            report = await self._sandbox(files, test_files)
            logger.info(
                "session %s tests round %d: %d passed, %d failed, %d errors",
                request.session_id,
                iterations,
                report.passed,
                report.failed,
                report.errors,
            )
            if report.success or iterations > max_fix:
                break
            fix_task = OfflineTask(
                role="engineer",
                kind="fix",
                workflow_type=request.workflow_type,
                requirements=request.requirements,
                configuration=dict(request.configuration),
                inputs=dict(request.inputs),
                files=files,
                test_files=test_files,
                test_output=report.output,
            )
            prompt = fix_prompt(
                requirements=request.requirements,
                files=files,
                test_files=test_files,
                test_output=report.output,
                limit=self._settings.max_context_chars,
            )
            revised = await self._call("engineer", engineer_model, prompt, fix_task, meter)
            assert isinstance(revised, EngineerOutput)
            files = _merge(files, [f.model_dump() for f in revised.files])
        output = TesterOutput(
            files=[CodeFile.model_validate(f) for f in files],
            test_files=[CodeFile.model_validate(f) for f in test_files],
            report=TestReportOutput(
                passed=report.passed,
                failed=report.failed,
                errors=report.errors,
                success=report.success,
                output=report.output,
                iterations=iterations,
                not_run_reason=report.not_run_reason,
                summary=classify_test_report(report).message,
            ),
        )
        return output.model_dump(mode="json")

    def _max_fix_iterations(self, configuration: dict[str, Any]) -> int:
        value = configuration.get("max_fix_iterations", DEFAULT_MAX_FIX_ITERATIONS)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PhaseFailed("configuration max_fix_iterations must be a whole number, 0 or more")
        return min(value, self._settings.max_fix_iterations)

    async def _sandbox(self, files: list[dict[str, Any]], test_files: list[dict[str, Any]]) -> TestRunReport:
        source_paths = {f["path"] for f in files}
        project = [*files, *(f for f in test_files if f["path"] not in source_paths)]
        started = time.monotonic()
        try:
            report = await run_tests(project, timeout_s=self._settings.sandbox.timeout_s, limits=self._settings.sandbox)
        except SandboxError as exc:
            self._observer.sandbox_run("unavailable", time.monotonic() - started)
            raise PhaseFailed(f"the sandbox cannot run the tests: {exc}") from None
        self._observer.sandbox_run(_sandbox_outcome(report), report.duration_s)
        return report

    # --- one model call ---------------------------------------------------------------------------------------

    def _output_spec(self, output_type: type[BaseModel]) -> Any:
        if self._settings.output_mode == "native":
            return NativeOutput(output_type)
        if self._settings.output_mode == "prompted":
            return PromptedOutput(output_type)
        return output_type

    async def _call(self, role: str, model_id: str, prompt: str, task: OfflineTask, meter: UsageMeter) -> BaseModel:
        """One agent run of `role` on `model_id`, with output validation retries; typed errors only."""
        provider, _ = parse_model_id(model_id)
        base = offline_model(task) if provider == "offline" else self._clients.model(model_id)
        model = ResilientModel(
            base,
            model_id=model_id,
            meter=meter,
            semaphore=self._clients.semaphore(provider),
            settings=self._settings,
            sleep=self._sleep,
            rng=self._rng,
            observer=self._observer,
        )
        agent: Agent[None, Any] = Agent(
            model,
            output_type=self._output_spec(ROLES[role].model_output),
            instructions=load_prompt(role),
            retries={"output": self._settings.output_retries},
            name=role,
        )
        tokens_left = meter.tokens_left()
        limits = UsageLimits(request_limit=self._settings.max_requests_per_phase, total_tokens_limit=tokens_left)
        attempts = self._settings.output_retries + 1
        try:
            result = await agent.run(
                prompt,
                usage_limits=limits,
                infer_name=False,
                model_settings={"max_tokens": self._settings.max_output_tokens},
            )
        except UsageLimitExceeded as exc:
            if "request_limit" in str(exc):
                raise PhaseFailed(
                    f"the {role} model {model_id} made {self._settings.max_requests_per_phase} requests "
                    "without producing a result"
                ) from None
            raise BudgetExceeded(
                f"token budget exceeded: the {role} model call went over the {tokens_left} tokens left "
                "for the workflow",
                usage=meter.usage(),
            ) from None
        except UnexpectedModelBehavior as exc:
            # No traceback: the model's answer in it may echo the requirements, which logs must not carry.
            logger.warning("%s model %s gave no valid output: %s", role, model_id, type(exc).__name__)
            detail = _validation_summary(exc.__cause__) or exc.message
            requests = meter.usage().requests
            raise PhaseFailed(
                f"the {role} model {model_id} did not return valid structured output in {requests} "
                f"request(s) (up to {attempts} allowed): {detail}",
                usage=meter.usage(),
            ) from None
        except ModelAPIError as exc:  # not retried by ResilientModel (it converts what it handles)
            logger.warning("%s model %s failed: %s", role, model_id, type(exc).__name__)
            raise PhaseFailed(
                f"model {model_id} failed: {describe_failure(exc, self._settings.request_timeout_s)}"
            ) from None
        output = result.output
        if not isinstance(output, BaseModel):  # pragma: no cover - the output type guarantees it
            raise PhaseFailed(f"the {role} model {model_id} returned no structured output")
        return output


def _sandbox_outcome(report: TestRunReport) -> SandboxOutcome:
    if report.timed_out:
        return "timeout"
    if report.success:
        return "passed"
    return "failed" if report.failed else "error"


def _merge(files: list[dict[str, Any]], revised: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`files` with the revised ones replacing (or added to) them by path, order kept."""
    by_path = {f["path"]: f for f in revised}
    merged = [by_path.pop(f["path"], f) for f in files]
    return merged + list(by_path.values())

"""Phase runners for tests: the engine's only fake is the model, and these stand in for it."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from orchestrator.agents import BudgetExceeded, PhaseFailed, PhaseRequest, PhaseResult
from orchestrator.agents.metering import PhaseUsage


class ScriptedRunner:
    """Instant, deterministic phases. `gate(phase)` makes a phase wait until released; `fail(phase)` makes it
    fail; every call is counted, and a cancelled call is recorded so tests see the model call's cancellation."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.cancelled: list[tuple[str, str]] = []
        self.started: dict[tuple[str, str], asyncio.Event] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._failures: dict[str, tuple[str, bool]] = {}
        self.configurations: dict[tuple[str, str], dict[str, Any]] = {}  # what each call was given
        self.delay = 0.0

    def gate(self, phase: str) -> asyncio.Event:
        self._gates[phase] = asyncio.Event()
        return self._gates[phase]

    def fail(self, phase: str, message: str, *, budget: bool = False) -> None:
        """Make `phase` fail with `message`: PhaseFailed, or BudgetExceeded with `budget`."""
        self._failures[phase] = (message, budget)

    def started_event(self, session_id: str, phase: str) -> asyncio.Event:
        return self.started.setdefault((session_id, phase), asyncio.Event())

    async def run(self, request: PhaseRequest) -> PhaseResult:
        key = (request.session_id, request.phase)
        self.calls.append(key)
        self.counts[key] += 1
        self.configurations[key] = dict(request.configuration)
        self.started_event(*key).set()
        try:
            if request.phase in self._gates:
                await self._gates[request.phase].wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        if request.phase in self._failures:
            spent = PhaseUsage(input_tokens=7, output_tokens=3, requests=2, cost_usd=0.0, model="scripted")
            message, budget = self._failures[request.phase]
            raise (BudgetExceeded if budget else PhaseFailed)(message, usage=spent)
        output: dict[str, Any] = {"phase": request.phase, "role": request.role, "inputs": sorted(request.inputs)}
        if request.role == "engineer":
            output["files"] = [{"path": "app.py", "language": "python", "content": "print('hi')\n"}]
        usage = PhaseUsage(input_tokens=10, output_tokens=5, requests=1, cost_usd=0.0, model="scripted")
        return PhaseResult(output=output, usage=usage)

    def describe_model(self, configuration: dict[str, Any]) -> str:
        return "scripted"

    async def check(self) -> tuple[bool, str]:
        return True, "scripted test model"

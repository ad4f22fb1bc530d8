"""Typed errors of a phase run, each with a message fit to show a user (no secrets, no tracebacks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.agents.metering import PhaseUsage

__all__ = ["AgentError", "BudgetExceeded", "PhaseFailed"]


class AgentError(Exception):
    """Base of the phase runner's errors. `code` is stable; `message` is for people."""

    code = "AGENT_ERROR"

    def __init__(self, message: str, *, usage: PhaseUsage | None = None) -> None:
        super().__init__(message)
        self.message = message
        # What the phase consumed before it failed, so the engine can still account for it.
        self.usage = usage

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # A durable engine may pickle a step's error (DBOS does); keep the usage through the round trip.
        return type(self), (self.message,), {"usage": self.usage}


class PhaseFailed(AgentError):
    """The phase cannot produce a result: invalid output or model errors after retries, bad input, sandbox."""

    code = "PHASE_FAILED"


class BudgetExceeded(AgentError):
    """The workflow's token or dollar budget ran out during (or before) the phase."""

    code = "BUDGET_EXCEEDED"

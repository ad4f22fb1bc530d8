"""Hooks through which the agents report model calls and sandbox runs, e.g. to metrics.

The domain stays free of any metrics library: the service implements `AgentObserver` over its Prometheus
registry (as it does `EngineObserver` for the engine) and hands it to the `PhaseRunner`.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["MODEL_OUTCOMES", "SANDBOX_OUTCOMES", "AgentObserver", "ModelOutcome", "NullAgentObserver", "SandboxOutcome"]

# Closed sets, so that whoever turns them into labels knows every value in advance.
ModelOutcome = Literal[
    "ok", "rate_limited", "quota_exceeded", "server_error", "client_error", "timeout", "connection", "error"
]
MODEL_OUTCOMES: tuple[ModelOutcome, ...] = (
    "ok",
    "rate_limited",
    "quota_exceeded",
    "server_error",
    "client_error",
    "timeout",
    "connection",
    "error",
)
SandboxOutcome = Literal["passed", "failed", "error", "timeout", "unavailable"]
SANDBOX_OUTCOMES: tuple[SandboxOutcome, ...] = ("passed", "failed", "error", "timeout", "unavailable")


class AgentObserver(Protocol):
    """Called on the event loop of the phase runner; implementations must not block."""

    def model_request(self, model: str, outcome: ModelOutcome, seconds: float) -> None:
        """One attempt of one model request ended (each retry is an attempt of its own)."""

    def model_retry(self, model: str, reason: ModelOutcome) -> None:
        """A failed attempt will be retried after a backoff."""

    def model_usage(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """A model response was metered: its tokens and their cost from the price table."""

    def sandbox_run(self, outcome: SandboxOutcome, seconds: float) -> None:
        """One sandboxed test run ended ('unavailable': the sandbox refused to run the files)."""


class NullAgentObserver:
    def model_request(self, model: str, outcome: ModelOutcome, seconds: float) -> None:
        pass

    def model_retry(self, model: str, reason: ModelOutcome) -> None:
        pass

    def model_usage(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        pass

    def sandbox_run(self, outcome: SandboxOutcome, seconds: float) -> None:
        pass

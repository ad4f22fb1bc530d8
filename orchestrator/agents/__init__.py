"""Agents: the phase runner the durable engine calls, its roles, models (offline, OpenAI-compatible,
Anthropic) and typed errors."""

from orchestrator.agents.errors import AgentError, BudgetExceeded, PhaseFailed
from orchestrator.agents.metering import Budget, PhaseUsage
from orchestrator.agents.observer import AgentObserver
from orchestrator.agents.runner import OFFLINE_HEALTH_MESSAGE, PhaseRequest, PhaseResult, PhaseRunner
from orchestrator.agents.settings import DEFAULT_PRICES, ROLE_NAMES, AgentSettings, ModelPrice
from orchestrator.sandbox import SandboxLimits

__all__ = [
    "DEFAULT_PRICES",
    "OFFLINE_HEALTH_MESSAGE",
    "ROLE_NAMES",
    "AgentError",
    "AgentObserver",
    "AgentSettings",
    "Budget",
    "BudgetExceeded",
    "ModelPrice",
    "PhaseFailed",
    "PhaseRequest",
    "PhaseResult",
    "PhaseRunner",
    "PhaseUsage",
    "SandboxLimits",
]

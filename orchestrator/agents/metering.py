"""Token and cost accounting of one phase, and the workflow budget it must stay within."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.agents.errors import BudgetExceeded
from orchestrator.agents.observer import AgentObserver, NullAgentObserver
from orchestrator.agents.settings import AgentSettings

logger = logging.getLogger(__name__)

__all__ = ["Budget", "PhaseUsage", "UsageMeter"]

_warned_unpriced: set[str] = set()


class Budget(BaseModel):
    """What the workflow may still spend; None means no limit on that measure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int | None = Field(default=None, description="Input plus output tokens left.")
    usd: float | None = Field(default=None, description="US dollars left, priced with the operator's table.")


class PhaseUsage(BaseModel):
    """What one phase consumed."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int
    output_tokens: int
    requests: int
    cost_usd: float
    model: str = Field(description="Model id, e.g. 'offline'; comma-separated when a phase used several.")


class UsageMeter:
    """Adds up every model response of a phase (retries included) and enforces the budget after each one."""

    def __init__(
        self, settings: AgentSettings, budget: Budget | None, model: str, observer: AgentObserver | None = None
    ) -> None:
        self._settings = settings
        self._observer = observer or NullAgentObserver()
        self._budget = budget
        self._models: list[str] = [model]
        self.input_tokens = 0
        self.output_tokens = 0
        self.requests = 0
        self.cost_usd = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def tokens_left(self) -> int | None:
        if self._budget is None or self._budget.tokens is None:
            return None
        return self._budget.tokens - self.total_tokens

    def usage(self) -> PhaseUsage:
        return PhaseUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            requests=self.requests,
            cost_usd=round(self.cost_usd, 6),
            model=", ".join(self._models),
        )

    def check(self) -> None:
        """Raise BudgetExceeded when the workflow's budget is used up."""
        if self._budget is None:
            return
        tokens, usd = self._budget.tokens, self._budget.usd
        if tokens is not None and (tokens <= 0 or self.total_tokens > tokens):
            raise BudgetExceeded(
                f"token budget exceeded: {max(tokens, 0)} tokens were left for the workflow "
                f"and this phase has used {self.total_tokens}",
                usage=self.usage(),
            )
        if usd is not None and (usd <= 0 or self.cost_usd > usd):
            raise BudgetExceeded(
                f"cost budget exceeded: ${max(usd, 0):.4f} was left for the workflow "
                f"and this phase has cost ${self.cost_usd:.4f}",
                usage=self.usage(),
            )

    def record(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """Account one model response, then enforce the budget."""
        if model not in self._models:
            self._models.append(model)
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        price = self._settings.price_of(model)
        cost = 0.0
        if price is None:
            if model not in _warned_unpriced:
                _warned_unpriced.add(model)
                logger.warning("no price for model %s: its cost is reported as 0", model)
        else:
            cost = (input_tokens * price.input_usd_per_mtok + output_tokens * price.output_usd_per_mtok) / 1_000_000
        self.cost_usd += cost
        # Reported before the budget check: tokens spent are spent, even by the response that broke the budget.
        self._observer.model_usage(model, input_tokens, output_tokens, cost)
        self.check()

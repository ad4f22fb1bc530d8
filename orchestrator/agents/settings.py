"""Settings of the phase runner: models, provider access, retries, prices and sandbox limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from orchestrator.sandbox import SandboxLimits

__all__ = ["DEFAULT_PRICES", "ROLE_NAMES", "AgentSettings", "ModelPrice", "parse_model_id"]

ROLE_NAMES = ("analyst", "architect", "engineer", "tester", "reviewer", "documenter")
PROVIDERS = ("openai", "anthropic")


class ModelPrice(BaseModel):
    """What a model costs, in US dollars per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)


# Public list prices when this was written; operators override or extend them with `AgentSettings.prices`.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "offline": ModelPrice(input_usd_per_mtok=0, output_usd_per_mtok=0),
    "openai:gpt-4o-mini": ModelPrice(input_usd_per_mtok=0.15, output_usd_per_mtok=0.60),
    "openai:gpt-4o": ModelPrice(input_usd_per_mtok=2.50, output_usd_per_mtok=10.00),
    "openai:gpt-4.1-nano": ModelPrice(input_usd_per_mtok=0.10, output_usd_per_mtok=0.40),
    "openai:gpt-4.1-mini": ModelPrice(input_usd_per_mtok=0.40, output_usd_per_mtok=1.60),
    "openai:gpt-4.1": ModelPrice(input_usd_per_mtok=2.00, output_usd_per_mtok=8.00),
    "anthropic:claude-haiku-4-5": ModelPrice(input_usd_per_mtok=1.00, output_usd_per_mtok=5.00),
    "anthropic:claude-sonnet-4-5": ModelPrice(input_usd_per_mtok=3.00, output_usd_per_mtok=15.00),
    "anthropic:claude-opus-4-1": ModelPrice(input_usd_per_mtok=15.00, output_usd_per_mtok=75.00),
}


def parse_model_id(model_id: str) -> tuple[str, str]:
    """('offline', 'offline') or (provider, model name) for 'openai:<model>' / 'anthropic:<model>'."""
    if model_id == "offline":
        return "offline", "offline"
    provider, sep, name = model_id.partition(":")
    if not sep or provider not in PROVIDERS or not name.strip() or name != name.strip():
        raise ValueError(f"unknown model {model_id!r}: use 'offline', 'openai:<model>' or 'anthropic:<model>'")
    return provider, name


class AgentSettings(BaseModel):
    """How the phase runner reaches models. Built once by the service and passed down."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_model: str = Field(default="offline", description="'offline', 'openai:<model>' or 'anthropic:<model>'.")
    role_models: dict[str, str] = Field(default_factory=dict, description="Model per role, over the default.")
    openai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp); None: api.openai.com."
    )
    openai_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    request_timeout_s: float = Field(default=120.0, gt=0, description="Limit of one model request attempt.")
    max_retries: int = Field(default=4, ge=0, description="Retries of a model request on 429, 5xx, timeouts.")
    backoff_base_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles per attempt.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Longest retry delay.")
    provider_concurrency: int = Field(default=8, ge=1, description="Model requests in flight per provider.")
    output_retries: int = Field(default=2, ge=0, description="Retries when the model's output is invalid.")
    output_mode: Literal["tool", "native", "prompted"] = Field(
        default="tool", description="How structured output is requested: tool call, JSON schema, or prompt."
    )
    max_requests_per_phase: int = Field(default=30, ge=1, description="Model requests one phase may make.")
    max_output_tokens: int = Field(
        default=4096, ge=16, description="Cap on the tokens one model response may generate (max_tokens)."
    )
    max_fix_iterations: int = Field(default=5, ge=0, description="Upper bound of configuration max_fix_iterations.")
    max_context_chars: int = Field(default=60_000, ge=1_000, description="Longest context section of a prompt.")
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Prices by model id, over DEFAULT_PRICES; unknown models cost 0."
    )
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)

    @field_validator("default_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        parse_model_id(value)
        return value

    @field_validator("role_models")
    @classmethod
    def _known_role_models(cls, value: dict[str, str]) -> dict[str, str]:
        for role, model_id in value.items():
            if role not in ROLE_NAMES:
                raise ValueError(f"unknown role {role!r} in role_models: roles are {', '.join(ROLE_NAMES)}")
            parse_model_id(model_id)
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> AgentSettings:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must not be smaller than backoff_base_s")
        return self

    def price_of(self, model_id: str) -> ModelPrice | None:
        """The price of `model_id`, or of the longest known id it starts with (dated model versions)."""
        table = {**DEFAULT_PRICES, **self.prices}
        if model_id in table:
            return table[model_id]
        prefixes = [key for key in table if model_id.startswith(key + "-")]
        return table[max(prefixes, key=len)] if prefixes else None

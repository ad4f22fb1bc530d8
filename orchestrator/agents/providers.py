"""Model providers behind pydantic-ai: offline, OpenAI-compatible and Anthropic, with retries and metering.

The SDK clients are built with their own retries off (`max_retries=0`) so that one place owns retrying: the
`ResilientModel` wrapper, with exponential backoff and jitter on 429, 5xx, timeouts and connection errors, a
per-attempt timeout, and a cap on requests in flight per provider.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestTimeout,
    ModelServerError,
    ModelUnavailableError,
)
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings

from orchestrator import fencing
from orchestrator.agents.errors import PhaseFailed
from orchestrator.agents.metering import UsageMeter
from orchestrator.agents.observer import AgentObserver, ModelOutcome, NullAgentObserver
from orchestrator.agents.settings import AgentSettings, parse_model_id

logger = logging.getLogger(__name__)

__all__ = ["ProviderClients", "ResilientModel", "backoff_delay", "failure_kind", "is_retryable", "public_url"]

Sleep = Callable[[float], Awaitable[None]]

_OPENAI_URL = "https://api.openai.com/v1"
_ANTHROPIC_URL = "https://api.anthropic.com"


def public_url(url: str) -> str:
    """`url` without credentials, query or fragment: safe to show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_retryable(exc: BaseException) -> bool:
    """Whether sending the same request again later may succeed: rate limits, overload, 5xx, timeouts."""
    if isinstance(exc, ModelQuotaExceededError):  # a 429 that waiting does not fix
        return False
    if isinstance(exc, ModelHTTPError):
        return exc.status_code in (408, 409, 425, 429) or exc.status_code >= 500
    return isinstance(
        exc,
        ModelRateLimitError
        | ModelUnavailableError
        | ModelServerError
        | ModelConnectionError
        | ModelRequestTimeout
        | TimeoutError,
    )


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random, retry_after: float | None) -> float:
    """Delay before retry number `attempt` (0-based): exponential, capped, with jitter in its upper half.

    A server's Retry-After is honoured up to the cap.
    """
    ceiling = min(cap, base * (2**attempt))
    delay: float = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(float(retry_after), cap))
    return delay


def failure_kind(exc: BaseException) -> ModelOutcome:
    """The category of a failed model request, for metrics: a closed set, never the provider's text."""
    status = exc.status_code if isinstance(exc, ModelHTTPError) else None
    if isinstance(exc, ModelQuotaExceededError):
        return "quota_exceeded"
    if isinstance(exc, ModelRateLimitError) or status == 429:
        return "rate_limited"
    if isinstance(exc, TimeoutError | ModelRequestTimeout) or status == 408:
        return "timeout"
    if isinstance(exc, ModelConnectionError):
        return "connection"
    if isinstance(exc, ModelServerError | ModelUnavailableError) or (status is not None and status >= 500):
        return "server_error"
    if status is not None or isinstance(exc, ModelAPIError):
        return "client_error"
    return "error"


def describe_failure(exc: BaseException, timeout_s: float) -> str:
    """What went wrong, for a user: status and category only, never the provider's body (it may echo keys)."""
    if isinstance(exc, ModelHTTPError):
        status = exc.status_code
        reasons = {
            401: "authentication failed: check the API key",
            403: "access denied: check the API key and its access to the model",
            404: "model or endpoint not found: check the model name and base URL",
            408: "request timeout",
            429: "rate limited",
        }
        if isinstance(exc, ModelQuotaExceededError):
            reason = "quota or credits exhausted"
        elif status in reasons:
            reason = reasons[status]
        elif status >= 500:
            reason = "server error"
        else:
            reason = "request rejected"
        return f"HTTP {status} ({reason})"
    if isinstance(exc, TimeoutError | ModelRequestTimeout):
        return f"no answer within {timeout_s:g}s"
    if isinstance(exc, ModelConnectionError):
        return "could not connect to the model endpoint or the connection broke"
    if isinstance(exc, ModelAPIError):
        return type(exc).__name__
    return type(exc).__name__


class ResilientModel(WrapperModel):
    """Wraps a pydantic-ai model: provider concurrency cap, per-attempt timeout, retries, usage metering."""

    def __init__(
        self,
        wrapped: Model,
        *,
        model_id: str,
        meter: UsageMeter,
        semaphore: asyncio.Semaphore | None,
        settings: AgentSettings,
        sleep: Sleep,
        rng: random.Random,
        observer: AgentObserver | None = None,
    ) -> None:
        super().__init__(wrapped)
        # Not `_settings`: pydantic-ai models keep their ModelSettings under that name.
        self._model_id = model_id
        self._meter = meter
        self._semaphore = semaphore
        self._agent_settings = settings
        self._sleep = sleep
        self._rng = rng
        self._observer = observer or NullAgentObserver()

    async def _attempt(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        # The timeout (and the latency observed) covers the request, not the wait for a free slot under the
        # provider's cap.
        if self._semaphore is None:
            return await self._timed(messages, model_settings, model_request_parameters)
        async with self._semaphore:
            return await self._timed(messages, model_settings, model_request_parameters)

    async def _timed(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        # After the wait for a slot, which can be long: a replica that was taken over meanwhile sends nothing.
        await fencing.before_model_call()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._agent_settings.request_timeout_s):
                response = await self.wrapped.request(messages, model_settings, model_request_parameters)
        except Exception as exc:  # observed and re-raised; cancellation is not an outcome of the model
            self._observer.model_request(self._model_id, failure_kind(exc), time.monotonic() - started)
            raise
        self._observer.model_request(self._model_id, "ok", time.monotonic() - started)
        return response

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        self._meter.check()
        attempts = self._agent_settings.max_retries + 1
        for attempt in range(attempts):
            try:
                response = await self._attempt(messages, model_settings, model_request_parameters)
            except (ModelAPIError, TimeoutError) as exc:  # never CancelledError: cancellation propagates
                if not is_retryable(exc):
                    raise PhaseFailed(
                        f"model {self._model_id} refused the request: "
                        f"{describe_failure(exc, self._agent_settings.request_timeout_s)}"
                    ) from None
                if attempt + 1 >= attempts:
                    raise PhaseFailed(
                        f"model {self._model_id} failed after {attempts} attempt(s): "
                        f"{describe_failure(exc, self._agent_settings.request_timeout_s)}"
                    ) from None
                delay = backoff_delay(
                    attempt,
                    base=self._agent_settings.backoff_base_s,
                    cap=self._agent_settings.backoff_max_s,
                    rng=self._rng,
                    retry_after=exc.retry_after if isinstance(exc, ModelAPIError) else None,
                )
                logger.warning(
                    "model %s attempt %d/%d failed (%s); retrying in %.2fs",
                    self._model_id,
                    attempt + 1,
                    attempts,
                    describe_failure(exc, self._agent_settings.request_timeout_s),
                    delay,
                )
                self._observer.model_retry(self._model_id, failure_kind(exc))
                await self._sleep(delay)
                continue
            usage = response.usage
            self._meter.record(self._model_id, usage.input_tokens, usage.output_tokens)
            return response
        raise AssertionError("unreachable")  # pragma: no cover


class ProviderClients:
    """The SDK clients and concurrency caps of one PhaseRunner, created on first use and shared by its phases.

    Clients and semaphores bind to the event loop they are first used on: use a PhaseRunner from one loop.
    """

    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        self._clients: dict[str, Any] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def semaphore(self, provider: str) -> asyncio.Semaphore | None:
        if provider == "offline":
            return None
        if provider not in self._semaphores:
            self._semaphores[provider] = asyncio.Semaphore(self._settings.provider_concurrency)
        return self._semaphores[provider]

    def openai_client(self) -> Any:
        if "openai" not in self._clients:
            from openai import AsyncOpenAI

            settings = self._settings
            if settings.openai_api_key is None and settings.openai_base_url is None:
                raise PhaseFailed(
                    "an OpenAI model is configured but no OpenAI API key: set the API key, "
                    "or a base URL of an OpenAI-compatible server"
                )
            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
            # Explicit values, so that the SDK never falls back to reading the environment.
            self._clients["openai"] = AsyncOpenAI(
                api_key=key,
                base_url=settings.openai_base_url or _OPENAI_URL,
                max_retries=0,
                timeout=settings.request_timeout_s,
            )
        return self._clients["openai"]

    def anthropic_client(self) -> Any:
        if "anthropic" not in self._clients:
            try:
                from anthropic import AsyncAnthropic
            except ImportError:
                raise PhaseFailed(
                    "an Anthropic model is configured but the anthropic SDK is not installed "
                    '(pip install "pydantic-ai-slim[anthropic]")'
                ) from None
            settings = self._settings
            if settings.anthropic_api_key is None:
                raise PhaseFailed("an Anthropic model is configured but no Anthropic API key is set")
            self._clients["anthropic"] = AsyncAnthropic(
                api_key=settings.anthropic_api_key.get_secret_value(),
                base_url=settings.anthropic_base_url or _ANTHROPIC_URL,
                max_retries=0,
                timeout=settings.request_timeout_s,
            )
        return self._clients["anthropic"]

    def model(self, model_id: str) -> Model:
        """The pydantic-ai model for 'openai:<name>' or 'anthropic:<name>' (the offline model is built per call)."""
        provider, name = parse_model_id(model_id)
        if provider == "openai":
            from pydantic_ai.models.openai import OpenAIChatModel
            from pydantic_ai.providers.openai import OpenAIProvider

            return OpenAIChatModel(name, provider=OpenAIProvider(openai_client=self.openai_client()))
        if provider == "anthropic":
            try:
                from pydantic_ai.models.anthropic import AnthropicModel
                from pydantic_ai.providers.anthropic import AnthropicProvider
            except ImportError:
                raise PhaseFailed(
                    "an Anthropic model is configured but the anthropic SDK is not installed "
                    '(pip install "pydantic-ai-slim[anthropic]")'
                ) from None
            return AnthropicModel(name, provider=AnthropicProvider(anthropic_client=self.anthropic_client()))
        raise ValueError(f"no provider client for {model_id!r}")

    async def check(self, model_id: str) -> tuple[bool, str]:
        """Whether the provider of `model_id` answers: lists its models, one attempt, short timeout."""
        provider, _ = parse_model_id(model_id)
        timeout = min(10.0, self._settings.request_timeout_s)
        if provider == "openai":
            kind, url = "OpenAI-compatible", public_url(self._settings.openai_base_url or _OPENAI_URL)
        else:
            kind, url = "Anthropic", public_url(self._settings.anthropic_base_url or _ANTHROPIC_URL)
        try:
            async with asyncio.timeout(timeout):
                if provider == "openai":
                    await self.openai_client().models.list()
                else:
                    await self.anthropic_client().models.list(limit=1)
        except PhaseFailed as exc:
            return False, f"{model_id}: {exc.message}"
        except Exception as exc:  # any failure of the probe is the answer; cancellation still propagates
            return False, f"{model_id}: {kind} endpoint {url} unreachable or refusing ({_probe_failure(exc)})"
        return True, f"{model_id}: {kind} endpoint {url} answers"

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _probe_failure(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__

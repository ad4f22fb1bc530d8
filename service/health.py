"""grpc.health.v1.Health with all three of its methods: Check, Watch and List.

grpcio-health-checking's asyncio servicer (1.85) implements Check and Watch only. Its base class's List raises
NotImplementedError, which an asyncio server reports as INTERNAL with a traceback in the log, for a method that
reflection advertises. This subclass answers List from the statuses it was given.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

from orchestrator.errors import ResourceExhausted
from service import errors

__all__ = ["HealthServicer"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """The reference asyncio servicer plus List. It keeps its own copy of the statuses: the base class's is
    private."""

    def __init__(self, max_watchers: int = 100) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": _SERVING}  # the base class starts the server ("") as SERVING
        self._shutting_down = False
        self._max_watchers = max_watchers
        self._watchers = 0

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """The base class's Watch, at most `max_watchers` at once: health needs no token, so anyone could
        otherwise hold one stream per connection for as long as they like."""
        if self._watchers >= self._max_watchers:
            refusal = ResourceExhausted(
                f"too many open health watch streams on this replica (the limit is {self._max_watchers}); "
                "poll Check instead, or retry later",
                retry_after_seconds=5.0,
                reason="TOO_MANY_WATCH_STREAMS",
            )
            _, status = errors.to_status(refusal, "")
            await context.abort_with_status(status)
        self._watchers += 1
        try:
            await super().Watch(request, context)
        finally:
            self._watchers -= 1

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        if not self._shutting_down:  # the base class ignores changes after a graceful shutdown began
            self._statuses[service] = status

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._shutting_down = True
        self._statuses = dict.fromkeys(self._statuses, _NOT_SERVING)

    async def List(self, request: health_pb2.HealthListRequest, context: Any) -> health_pb2.HealthListResponse:
        """Every service with a status, the server itself ("") included, as the health protocol asks. The list
        is a handful of fixed names, so RESOURCE_EXHAUSTED (the protocol's answer to too many) never applies."""
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in self._statuses.items()}
        )

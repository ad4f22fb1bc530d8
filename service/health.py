"""grpc.health.v1.Health with all three of its methods: Check, Watch and List.

grpcio-health-checking's asyncio servicer (1.85) implements Check and Watch only. Its base class's List raises
NotImplementedError, which an asyncio server reports as INTERNAL with a traceback in the log, for a method that
reflection advertises. This subclass answers List from the statuses it was given.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

__all__ = ["HealthServicer"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """The reference asyncio servicer plus List. It keeps its own copy of the statuses: the base class's is
    private."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": _SERVING}  # the base class starts the server ("") as SERVING
        self._shutting_down = False

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

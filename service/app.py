"""The whole service in one process: engine, grpc.aio server, metrics endpoint and the Envoy sidecar."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from orchestrator.agents import PhaseRunner
from orchestrator.definitions import load_catalog
from orchestrator.engine import Engine, PhaseRunnerLike
from orchestrator.settings import Settings
from service.metrics import MetricsServer, ServiceMetrics
from service.server import build_server, set_serving

logger = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    runner: PhaseRunnerLike | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    grpc_port: int = 0
    metrics_port: int = 0
    http_port: int = 0
    engine: Engine | None = None
    _server: grpc.aio.Server | None = None
    _metrics_server: MetricsServer | None = None
    _health: health.aio.HealthServicer | None = None
    _envoy: object | None = None
    _own_runner: PhaseRunner | None = None

    async def start(self) -> None:
        settings = self.settings
        metrics = ServiceMetrics(self.registry)
        runner = self.runner
        if runner is None:
            runner = self._own_runner = PhaseRunner(settings.agents)
        self.engine = Engine(settings, load_catalog(settings.workflow_types_dir), runner, metrics)
        metrics.track_running(lambda: self.engine.running_count() if self.engine else 0)
        self._health = health.aio.HealthServicer()
        await set_serving(self._health, False)
        self._server, self.grpc_port = build_server(settings, self.engine, metrics, self._health)
        await self.engine.start()
        await self._server.start()
        self._metrics_server = MetricsServer(self.registry, settings.host, settings.metrics_port)
        self._metrics_server.start()
        self.metrics_port = self._metrics_server.port
        await set_serving(self._health, True)
        if settings.envoy:
            await self._start_envoy()
        logger.info(
            "serving gRPC on %s:%d, metrics on :%d%s",
            settings.host,
            self.grpc_port,
            self.metrics_port,
            f", REST on :{self.http_port}" if settings.envoy else "",
        )

    async def _start_envoy(self) -> None:
        from gateway.config import GatewayOptions
        from gateway.sidecar import EnvoySidecar

        options = GatewayOptions(
            listen_host=self.settings.host,
            listen_port=self.settings.http_port,
            admin_host="127.0.0.1",
            admin_port=self.settings.envoy_admin_port,
            grpc_host=self.settings.host,
            grpc_port=self.grpc_port,
            metrics_host=self.settings.host,
            metrics_port=self.metrics_port,
        )
        sidecar = EnvoySidecar(options, work_dir=self.settings.data_dir / "envoy")
        await sidecar.start()
        self._envoy = sidecar
        self.http_port = sidecar.http_port

    async def stop(self, grace: float = 10.0) -> None:
        """NOT_SERVING first so balancers stop sending, then drain in-flight calls, then stop the engine.
        Running workflows are not finished here: they resume when a replica with this id starts again."""
        if self._health is not None:
            await set_serving(self._health, False)
        if self.engine is not None:
            self.engine.stop_accepting()
        if self._server is not None:
            await self._server.stop(grace)
        if self.engine is not None:
            await self.engine.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if self._envoy is not None:
            await self._envoy.stop()  # type: ignore[attr-defined]
        if self._own_runner is not None:
            await self._own_runner.aclose()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    app = App(settings)
    await app.start()
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await app.stop()

"""The whole service in one process: engine, grpc.aio server, metrics endpoint and the Envoy sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health
from prometheus_client import CollectorRegistry

from orchestrator.agents import AgentSettings, PhaseRunner
from orchestrator.definitions import load_catalog
from orchestrator.engine import Engine, PhaseRunnerLike
from orchestrator.models import ServingStatus
from orchestrator.sandbox import SandboxLimits, sweep_leftovers
from orchestrator.settings import Settings
from service.auth import Gatekeeper
from service.health import HealthServicer
from service.live import LiveServer
from service.metrics import MetricsServer, ServiceMetrics
from service.server import build_server, set_ready, set_serving
from service.startup import describe_startup_failure

logger = logging.getLogger(__name__)

# How often grpc.health.v1 is brought in line with the engine's health (which caches its own check for 2 s).
# Kubernetes probes every 5 s: a replica whose database fails is out of its Service within about two periods.
HEALTH_FOLLOW_SECONDS = 2.0


@dataclass
class App:
    settings: Settings
    runner: PhaseRunnerLike | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    grpc_port: int = 0
    metrics_port: int = 0
    http_port: int = 0
    live_port: int = 0
    engine: Engine | None = None
    _server: grpc.aio.Server | None = None
    _metrics_server: MetricsServer | None = None
    _live: LiveServer | None = None
    _health: health.aio.HealthServicer | None = None
    _envoy: object | None = None
    _own_runner: PhaseRunner | None = None
    _health_follower: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        metrics = ServiceMetrics(self.registry)
        # Sandboxed runs a killed predecessor (same replica id and data directory) left: killed and removed before
        # recovered workflows start new ones. A pool of its own: DBOS shuts the loop's default one down at stop.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-sweep") as pool:
            await asyncio.get_running_loop().run_in_executor(pool, sweep_leftovers, sandbox_limits(settings))
        runner = self.runner
        if runner is None:
            runner = self._own_runner = PhaseRunner(_sandboxed(settings), observer=metrics)
        catalog = load_catalog(settings.workflow_types_dir)
        self.engine = engine = Engine(settings, catalog, runner, metrics)
        metrics.track_running(engine.running_count)
        metrics.track_queued(engine.queued_counts, catalog.names())
        # The reference servicer plus List, and a cap on Watch streams (health needs no token).
        self._health = HealthServicer(max_watchers=settings.max_health_watch_streams)
        await set_serving(self._health, False)
        # One gatekeeper for the gRPC server and the live endpoint: one set of per-tenant limits and stream caps.
        gatekeeper = Gatekeeper(settings)
        self._server, self.grpc_port = build_server(settings, self.engine, metrics, self._health, gatekeeper)
        await self.engine.start()
        await self._server.start()
        self._live = LiveServer(settings, self.engine, gatekeeper, metrics)
        await self._live.start()
        self.live_port = self._live.port
        token = settings.auth.metrics_token
        self._metrics_server = MetricsServer(
            self.registry, settings.metrics_host, settings.metrics_port, token.get_secret_value() if token else None
        )
        self._metrics_server.start()
        self.metrics_port = self._metrics_server.port
        await set_serving(self._health, True)
        self._health_follower = asyncio.create_task(self._follow_health(), name="health-follower")
        if settings.envoy:
            await self._start_envoy()
        logger.info(
            "serving gRPC%s on %s:%d, metrics on :%d, live channel on :%d%s",
            " (mutual TLS)" if settings.tls.mutual else " (TLS)" if settings.tls.enabled else "",
            settings.host,
            self.grpc_port,
            self.metrics_port,
            self.live_port,
            f", REST on :{self.http_port}" if settings.envoy else "",
        )

    async def _start_envoy(self) -> None:
        from gateway.config import GatewayOptions
        from gateway.sidecar import EnvoySidecar

        settings = self.settings
        tls = settings.tls
        options = GatewayOptions(
            listen_host=settings.host,
            listen_port=settings.http_port,
            admin_host="127.0.0.1",
            admin_port=settings.envoy_admin_port,
            grpc_host=settings.host,
            grpc_port=self.grpc_port,
            # A wildcard bind is reached on loopback; any other address as it is.
            metrics_host="127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::") else settings.metrics_host,
            metrics_port=self.metrics_port,
            live_host=settings.host,
            live_port=self.live_port,
            allowed_hosts=settings.allowed_hosts,
            cors_allowed_origins=settings.cors_allowed_origins,
            # One limit for both doors: REST bodies at Envoy, gRPC messages at the server.
            max_request_bytes=settings.max_request_bytes,
            request_timeout_seconds=settings.request_timeout_seconds,
            upstream_ca_file=_absolute(tls.ca_file),
            upstream_cert_file=_absolute(tls.envoy_cert_file),
            upstream_key_file=_absolute(tls.envoy_key_file),
            upstream_server_name=tls.server_name,
        )
        sidecar = EnvoySidecar(options, work_dir=self.settings.data_dir / "envoy")
        await sidecar.start()
        self._envoy = sidecar
        self.http_port = sidecar.http_port

    async def _follow_health(self) -> None:
        """grpc.health.v1 follows the engine's health: NOT_SERVING while the replica cannot serve (its database out
        of reach or refusing writes), so readiness probes and balancers take it out; SERVING once it can again."""
        assert self.engine is not None and self._health is not None
        ready = True
        while True:
            await asyncio.sleep(HEALTH_FOLLOW_SECONDS)
            try:
                report = await self.engine.health()
                now = report.status is not ServingStatus.NOT_SERVING
                failing = [d for d in report.dependencies if d.status is ServingStatus.NOT_SERVING]
                why = "; ".join(f"{d.name}: {d.message}" for d in failing)
            except Exception as exc:
                now, why = False, f"the health check failed ({type(exc).__name__})"
            if now != ready:
                ready = now
                if ready:
                    logger.warning("serving again: the replica's dependencies are back")
                else:
                    logger.error("NOT_SERVING until its dependencies are back: %s", why)
                await set_ready(self._health, ready)

    async def stop(self, grace: float = 10.0) -> None:
        """NOT_SERVING first so balancers stop sending, then end the watch streams in-band (a watch lasts as long as
        its workflow: waiting for them would use up the grace, cutting them would look like a finished stream),
        then drain in-flight calls, then stop the engine. Running workflows are not finished here: they resume
        when a replica with this id starts again."""
        if self._health_follower is not None:
            self._health_follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_follower
        if self._health is not None:
            await set_serving(self._health, False)
        if self.engine is not None:
            self.engine.stop_accepting()
            self.engine.end_watches()
        if self._server is not None:
            await self._server.stop(grace)
        if self._live is not None:
            await self._live.stop()
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


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()


def _sandboxed(settings: Settings) -> AgentSettings:
    """The agents' settings with the directories generated code must never see: the data directory (every
    tenant's sessions), the service user's home, and wherever keys live."""
    secrets = [
        settings.tls.cert_file,
        settings.tls.key_file,
        settings.tls.client_ca_file,
        settings.tls.ca_file,
        settings.tls.envoy_cert_file,
        settings.tls.envoy_key_file,
        settings.auth.jwks_file,
    ]
    hidden = {str(settings.data_dir), str(Path.home())} | {str(p.resolve().parent) for p in secrets if p is not None}
    sandbox = settings.agents.sandbox
    limits = sandbox.model_copy(update={"hidden_dirs": tuple(sorted(hidden | set(sandbox.hidden_dirs)))})
    return settings.agents.model_copy(update={"sandbox": sandbox_limits(settings, limits)})


def sandbox_limits(settings: Settings, limits: SandboxLimits | None = None) -> SandboxLimits:
    """The sandbox limits with their owner: this replica in this data directory, so that its next start sweeps
    the runs it left and no other server's (tests run many servers with one replica id side by side)."""
    limits = limits or settings.agents.sandbox
    if limits.owner:
        return limits
    place = hashlib.sha256(str(settings.data_dir).encode()).hexdigest()[:12]
    return limits.model_copy(update={"owner": f"{settings.replica_id}-{place}"})


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Runs the service until `stop` is set. Raises StartupError, one line for people, when it cannot start."""
    app = App(settings)
    try:
        await app.start()
    except Exception as exc:
        # What did start (the engine's threads, Envoy, a listening port) must not outlive the failure.
        try:
            await app.stop(grace=0)
        except Exception:
            logger.debug("cleaning up after a failed start-up failed too", exc_info=True)
        raise describe_startup_failure(exc, settings.data_dir / "envoy" / "envoy.log") from exc
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await app.stop()

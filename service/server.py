"""Builds the grpc.aio server: the orchestrator service, grpc.health.v1, reflection (v1 and v1alpha), one
interceptor."""

from __future__ import annotations

import ipaddress
import logging

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orchestrator.engine import Engine
from orchestrator.settings import Settings
from service.auth import Gatekeeper
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from service.interceptors import ServiceInterceptor
from service.metrics import ServiceMetrics
from service.reflection import enable_reflection
from service.servicer import OrchestratorServicer
from service.startup import check_port_free

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def build_server(
    settings: Settings,
    engine: Engine,
    metrics: ServiceMetrics,
    health_servicer: health.aio.HealthServicer,
    gatekeeper: Gatekeeper | None = None,
) -> tuple[grpc.aio.Server, int]:
    """The server, not started, bound to settings.host:settings.grpc_port (0 picks a free port). Pass the
    `gatekeeper` another door (the live endpoint) admits through, so both share its limits."""
    gatekeeper = gatekeeper or Gatekeeper(settings)
    if gatekeeper.verifier is None:
        logger.warning("%s; bound to %s", gatekeeper.describe(), settings.host)
    else:
        logger.info("%s", gatekeeper.describe())
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(metrics, gatekeeper)],
        options=[
            # grpc itself answers a larger request with RESOURCE_EXHAUSTED, before any handler runs.
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            # gRPC binds with SO_REUSEPORT by default: a second instance given the same port would start "fine"
            # and the kernel would split clients between two unrelated servers. Off, the port is in use.
            ("grpc.so_reuseport", 0),
        ],
    )
    metrics.initialize_methods(
        _methods(
            pb.DESCRIPTOR.services_by_name["OrchestratorService"], health_pb2.DESCRIPTOR.services_by_name["Health"]
        )
    )
    pb_grpc.add_OrchestratorServiceServicer_to_server(OrchestratorServicer(settings, engine, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection([SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server)
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    if credentials is None and not _is_loopback(settings.host):
        logger.warning(
            "gRPC listens on %s without TLS: bearer tokens cross the network in clear text; set ORCHESTRATOR_TLS__* "
            "or bind to loopback behind Envoy",
            settings.host,
        )
    check_port_free("gRPC", settings.host, settings.grpc_port, "--grpc-port")
    port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind the gRPC port {settings.host}:{settings.grpc_port}")
    return server, port


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from settings.tls (None when TLS is off). With a client CA, a client without a
    certificate that CA issued fails the handshake: no RPC, not even Health, is reached."""
    tls = settings.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
        require_client_auth=tls.mutual,
    )


def _methods(*services: ServiceDescriptor) -> list[tuple[str, str, str]]:
    """(grpc_type, grpc_service, grpc_method) of every method, with go-grpc-prometheus's grpc_type names."""
    kinds = {
        (False, False): "unary",
        (True, False): "client_stream",
        (False, True): "server_stream",
        (True, True): "bidi_stream",
    }
    return [
        (kinds[(m.client_streaming, m.server_streaming)], service.full_name, m.name)
        for service in services
        for m in service.methods
    ]


# grpc.health.v1 names. "" (the server) and the service say whether this replica can serve calls now: NOT_SERVING
# while it starts, while its database is out of reach or full, and from the start of a shutdown; readiness probes
# and balancers read them. LIVENESS says only that the process runs and is not shutting down: a restart would not
# bring a database back, so liveness probes (and the Envoy sidecar's upstream check, which would otherwise answer
# every REST call itself, without the service's own UNAVAILABLE and retry delay) read this one.
LIVENESS = "liveness"


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Every name, LIVENESS included: the start and the end of the process."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME, LIVENESS):
        await health_servicer.set(name, status)


async def set_ready(health_servicer: health.aio.HealthServicer, ready: bool) -> None:
    """The server and the service, not LIVENESS: whether the replica's dependencies let it serve now."""
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)

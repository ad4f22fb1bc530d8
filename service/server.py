"""Builds the grpc.aio server: the orchestrator service, grpc.health.v1, reflection, one interceptor."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from orchestrator.engine import Engine
from orchestrator.settings import Settings
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from service.interceptors import ServiceInterceptor
from service.metrics import ServiceMetrics
from service.servicer import OrchestratorServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def build_server(
    settings: Settings, engine: Engine, metrics: ServiceMetrics, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """The server, not started, bound to settings.host:settings.grpc_port (0 picks a free port)."""
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(metrics)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ],
    )
    pb_grpc.add_OrchestratorServiceServicer_to_server(OrchestratorServicer(settings, engine, metrics), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    if port == 0:
        raise OSError(f"could not bind the gRPC port {settings.host}:{settings.grpc_port}")
    return server, port


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)

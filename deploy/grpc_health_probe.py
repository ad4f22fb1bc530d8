#!/usr/bin/env python3
"""Container health check: asks grpc.health.v1 for the overall status; exits 0 only when SERVING.

    grpc-health-probe [ADDRESS]    (default 127.0.0.1:$ORCHESTRATOR_GRPC_PORT, or 127.0.0.1:50051)

Kubernetes uses its native gRPC probes instead; Docker Compose, which has none, runs this one.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else f"127.0.0.1:{os.environ.get('ORCHESTRATOR_GRPC_PORT', '50051')}"
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    except grpc.RpcError as error:
        print(f"{address}: {error.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Prometheus metrics on an injected registry, and the small HTTP server that exposes them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class ServiceMetrics:
    """The standard gRPC server metrics (go-grpc-prometheus names) and the engine's domain metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        grpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by code.",
            [*grpc_labels, "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC.",
            grpc_labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total", "Stream messages received.", grpc_labels, registry=registry
        )
        self.msg_sent = Counter("grpc_server_msg_sent_total", "Stream messages sent.", grpc_labels, registry=registry)
        self.submitted = Counter(
            "orchestrator_workflows_submitted_total", "Workflows accepted.", ["workflow_type"], registry=registry
        )
        self.finished = Counter(
            "orchestrator_workflows_finished_total",
            "Workflows that ended, by final state.",
            ["workflow_type", "state"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "orchestrator_queue_wait_seconds",
            "Time from submission to start.",
            ["workflow_type"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.phase_duration = Histogram(
            "orchestrator_phase_duration_seconds",
            "Duration of a phase, by outcome.",
            ["workflow_type", "phase", "outcome"],
            buckets=_PHASE_BUCKETS,
            registry=registry,
        )
        self.watch_streams = Gauge("orchestrator_watch_streams_open", "Open WatchWorkflow streams.", registry=registry)
        self.running = Gauge("orchestrator_workflows_running", "Workflows running on this replica.", registry=registry)

    # EngineObserver
    def workflow_submitted(self, workflow_type: str) -> None:
        self.submitted.labels(workflow_type).inc()

    def workflow_started(self, workflow_type: str, queue_wait_seconds: float) -> None:
        self.queue_wait.labels(workflow_type).observe(max(0.0, queue_wait_seconds))

    def workflow_finished(self, workflow_type: str, state: str) -> None:
        self.finished.labels(workflow_type, state).inc()

    def phase_finished(self, workflow_type: str, phase: str, outcome: str, seconds: float) -> None:
        self.phase_duration.labels(workflow_type, phase, outcome).observe(seconds)

    def track_running(self, count: Callable[[], int]) -> None:
        self.running.set_function(lambda: float(count()))


class MetricsServer:
    """Serves GET /metrics (and later the API docs) over plain HTTP on its own thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        registry_ref = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "not found")
                    return
                body = generate_latest(registry_ref)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""Prometheus metrics on an injected registry, and the small HTTP server that exposes them."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.agents.observer import ModelOutcome, SandboxOutcome
from service import docs
from service.startup import check_port_free

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_MODEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_SANDBOX_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

# grpc_code values as go-grpc-prometheus writes them (Go's codes.Code.String()), so that the community's gRPC
# dashboards and alerts (e.g. grpc_code=~"Unknown|Internal|Unavailable|DataLoss|DeadlineExceeded") work unchanged.
GRPC_CODE_LABELS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# Model ids come from each request's configuration, so a client could mint new label values at will. The first
# ones seen are kept (operators configure a handful), every later one is counted as OTHER_MODEL.
MAX_MODEL_LABELS = 50
OTHER_MODEL = "other"


class ServiceMetrics:
    """The standard gRPC server metrics (go-grpc-prometheus names and labels), the engine's and the agents' domain
    metrics, and the process metrics. Implements `EngineObserver` and `AgentObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        grpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", grpc_labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*grpc_labels, "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            grpc_labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            grpc_labels,
            registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            grpc_labels,
            registry=registry,
        )

        self.submitted = Counter(
            "orchestrator_workflows_submitted_total",
            "Workflows accepted on this replica (idempotent repeats excluded).",
            ["workflow_type"],
            registry=registry,
        )
        self.finished = Counter(
            "orchestrator_workflows_finished_total",
            "Workflows that ended, by final state (completed, failed, cancelled), counted by the replica that ended "
            "them.",
            ["workflow_type", "state"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "orchestrator_queue_wait_seconds",
            "Time from submission to the start of the workflow, observed by the replica that started it.",
            ["workflow_type"],
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        self.phase_duration = Histogram(
            "orchestrator_phase_duration_seconds",
            "Duration of a phase (every attempt of its step), by outcome (completed, failed).",
            ["workflow_type", "phase", "outcome"],
            buckets=_PHASE_BUCKETS,
            registry=registry,
        )
        self.phase_reexecutions = Counter(
            "orchestrator_phase_reexecutions_total",
            "Phases whose model call started again after an earlier start on this or another replica was cut off "
            "(a crash, a kill, a takeover): each costs a second model call. Counted by the replica that re-runs it.",
            ["workflow_type", "phase"],
            registry=registry,
        )
        self.taken_over = Counter(
            "orchestrator_replica_taken_over_total",
            "Times this replica found that another had declared it dead and taken its running workflows over "
            "(it was paused or cut off from the database longer than replica_dead_after_seconds).",
            registry=registry,
        )
        self.watch_streams = Gauge(
            "orchestrator_watch_streams_open",
            "Open watch streams (gRPC, REST and WebSocket) on this replica.",
            registry=registry,
        )
        self.running = Gauge(
            "orchestrator_workflows_running",
            "Workflows running on this replica now; sum over replicas for the total.",
            registry=registry,
        )

        self.model_requests = Counter(
            "orchestrator_model_requests_total",
            "Model request attempts (each retry counts), by outcome: ok, rate_limited, quota_exceeded, "
            "server_error, client_error, timeout, connection, error.",
            ["model", "outcome"],
            registry=registry,
        )
        self.model_latency = Histogram(
            "orchestrator_model_request_duration_seconds",
            "Latency of one model request attempt, without the wait for a slot under the provider's cap.",
            ["model"],
            buckets=_MODEL_BUCKETS,
            registry=registry,
        )
        self.model_retries = Counter(
            "orchestrator_model_retries_total",
            "Model request attempts that failed and are retried after a backoff, by reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.model_tokens = Counter(
            "orchestrator_model_tokens_total",
            "Tokens of metered model responses, by token_type (input, output).",
            ["model", "token_type"],
            registry=registry,
        )
        self.model_cost = Counter(
            "orchestrator_model_cost_usd_total",
            "Cost of metered model responses in US dollars, from the operator's price table (0 when unpriced).",
            ["model"],
            registry=registry,
        )
        self.sandbox_runs = Counter(
            "orchestrator_sandbox_runs_total",
            "Sandboxed test runs, by outcome: passed, failed, error, timeout, unavailable (the sandbox refused).",
            ["outcome"],
            registry=registry,
        )
        self.sandbox_duration = Histogram(
            "orchestrator_sandbox_run_duration_seconds",
            "Wall-clock duration of one sandboxed test run.",
            buckets=_SANDBOX_BUCKETS,
            registry=registry,
        )
        self._models: set[str] = set()
        self._models_lock = threading.Lock()

        # The process metrics prometheus_client puts on its global registry, here on ours.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def initialize_methods(self, methods: Iterable[tuple[str, str, str]]) -> None:
        """Creates every series of these (grpc_type, grpc_service, grpc_method) at zero, as go-grpc-prometheus does,
        so that rates and alerts see a method before its first call, and every code before its first error."""
        for labels in methods:
            self.started.labels(*labels)
            self.handling.labels(*labels)
            self.msg_received.labels(*labels)
            self.msg_sent.labels(*labels)
            for code in GRPC_CODE_LABELS.values():
                self.handled.labels(*labels, code)

    def rpc_handled(self, grpc_type: str, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.handled.labels(grpc_type, service, method, GRPC_CODE_LABELS.get(code, "Unknown")).inc()
        self.handling.labels(grpc_type, service, method).observe(seconds)

    # EngineObserver
    def workflow_submitted(self, workflow_type: str) -> None:
        self.submitted.labels(workflow_type).inc()

    def workflow_started(self, workflow_type: str, queue_wait_seconds: float) -> None:
        self.queue_wait.labels(workflow_type).observe(max(0.0, queue_wait_seconds))

    def workflow_finished(self, workflow_type: str, state: str) -> None:
        self.finished.labels(workflow_type, state).inc()

    def phase_finished(self, workflow_type: str, phase: str, outcome: str, seconds: float) -> None:
        self.phase_duration.labels(workflow_type, phase, outcome).observe(seconds)

    def phase_reexecuted(self, workflow_type: str, phase: str) -> None:
        self.phase_reexecutions.labels(workflow_type, phase).inc()

    def replica_taken_over(self) -> None:
        self.taken_over.inc()

    def track_running(self, count: Callable[[], int]) -> None:
        self.running.set_function(lambda: float(count()))

    def track_queued(self, counts: Callable[[], dict[str, int]], workflow_types: Sequence[str]) -> None:
        """orchestrator_workflows_queued{workflow_type}, read from the database at scrape time."""
        self.registry.register(_QueuedCollector(counts, tuple(workflow_types)))

    # AgentObserver
    def model_request(self, model: str, outcome: ModelOutcome, seconds: float) -> None:
        label = self._model_label(model)
        self.model_requests.labels(label, outcome).inc()
        self.model_latency.labels(label).observe(seconds)

    def model_retry(self, model: str, reason: ModelOutcome) -> None:
        self.model_retries.labels(self._model_label(model), reason).inc()

    def model_usage(self, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        label = self._model_label(model)
        self.model_tokens.labels(label, "input").inc(max(0, input_tokens))
        self.model_tokens.labels(label, "output").inc(max(0, output_tokens))
        self.model_cost.labels(label).inc(max(0.0, cost_usd))

    def sandbox_run(self, outcome: SandboxOutcome, seconds: float) -> None:
        self.sandbox_runs.labels(outcome).inc()
        self.sandbox_duration.observe(max(0.0, seconds))

    def _model_label(self, model: str) -> str:
        with self._models_lock:
            if model in self._models:
                return model
            if len(self._models) < MAX_MODEL_LABELS:
                self._models.add(model)
                return model
        return OTHER_MODEL


class _QueuedCollector(Collector):
    """Counts QUEUED workflows when scraped: one indexed query on the scrape thread, never on the event loop.
    The count is the whole database's, the same on every replica: aggregate with max(), not sum()."""

    NAME = "orchestrator_workflows_queued"
    HELP = (
        "Workflows waiting in the queue, across all replicas (read from the shared database at scrape time: "
        "every replica reports the same value, aggregate with max, not sum)."
    )

    def __init__(self, counts: Callable[[], dict[str, int]], workflow_types: tuple[str, ...]) -> None:
        self._counts = counts
        self._types = workflow_types

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["workflow_type"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["workflow_type"])
        try:
            counts = self._counts()
        except Exception as exc:  # a scrape must not fail for it: the series go missing, which alerts can see
            logger.warning("could not count queued workflows for metrics: %s", type(exc).__name__)
            yield family
            return
        for workflow_type in sorted({*self._types, *counts}):
            family.add_metric([workflow_type], float(counts.get(workflow_type, 0)))
        yield family


# A connection that sends nothing for this long is closed: an idle one must not pin a thread forever.
METRICS_IDLE_TIMEOUT_SECONDS: Final = 10.0
# At most this many connections are served at once (one thread each); more are closed at once. A scrape every
# few seconds and a docs reader need a handful.
METRICS_MAX_CONNECTIONS: Final = 32


class _BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a ceiling on threads: past `max_connections`, new connections are closed."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves GET /metrics and the API docs (/openapi.json, /docs, /redoc; service/docs.py) over plain HTTP on
    its own threads, bounded in number and in how long an idle connection may stay."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        token: str | None = None,
        *,
        idle_timeout: float = METRICS_IDLE_TIMEOUT_SECONDS,
        max_connections: int = METRICS_MAX_CONNECTIONS,
    ) -> None:
        registry_ref = registry
        expected = f"Bearer {token}".encode() if token else None

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout  # socketserver applies it to each connection's socket

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path != "/metrics":
                    self._reply_docs(path)
                    return
                if expected is not None:
                    given = (self.headers.get("Authorization") or "").encode()
                    if not hmac.compare_digest(given, expected):
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Bearer realm="metrics"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = generate_latest(registry_ref)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _reply_docs(self, path: str) -> None:
                reply = docs.shared().reply(path)
                if reply is None:
                    self.send_error(404, "not found")
                    return
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the log

        check_port_free("metrics", host, port, "--metrics-port")  # else a bare "Address already in use"
        self._server = _BoundedThreadingHTTPServer((host, port), Handler, max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

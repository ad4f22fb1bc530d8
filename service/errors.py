"""The one table from domain errors to gRPC status codes and google.rpc details, and the codes' HTTP statuses."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from orchestrator.errors import (
    InvalidArgument,
    OrchestratorError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "orchestrator.v1"

CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNKNOWN_WORKFLOW_TYPE": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    # The reasons these errors give in ErrorInfo (TOKEN_EXPIRED, RATE_LIMITED, ...) share their class's code.
    **dict.fromkeys(ResourceExhausted.REASONS, grpc.StatusCode.RESOURCE_EXHAUSTED),
    **dict.fromkeys(Unavailable.REASONS, grpc.StatusCode.UNAVAILABLE),
    **dict.fromkeys(PermissionDenied.REASONS, grpc.StatusCode.PERMISSION_DENIED),
    **dict.fromkeys(Unauthenticated.REASONS, grpc.StatusCode.UNAUTHENTICATED),
}


# The HTTP status of each gRPC code, as Envoy's transcoder maps them (google/rpc/code.proto's HTTP mapping), for
# the endpoints the service answers over HTTP itself (service/live.py), so a REST client sees one mapping.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def code_of(exc: OrchestratorError) -> grpc.StatusCode:
    """The gRPC code of a domain error (INTERNAL for a code this table does not know)."""
    return CODES.get(exc.code, grpc.StatusCode.INTERNAL)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: OrchestratorError | None, request_id: str) -> tuple[grpc.StatusCode, grpc.Status]:
    """The status for a domain error; None means an unexpected failure, reported without its text."""
    if exc is None:
        code, message, reason = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})", "INTERNAL"
    else:
        code, message, reason = code_of(exc), exc.message, exc.code
    details = []
    if isinstance(exc, InvalidArgument) and exc.violations:
        bad = error_details_pb2.BadRequest()
        for v in exc.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        details.append(_pack(bad))
    # A retry delay on every error a retry may cure: clients wait at least this long, and the REST face turns it
    # into Retry-After.
    if isinstance(exc, ResourceExhausted | Unavailable):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(exc.retry_after_seconds * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    details.append(_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)))
    details.append(_pack(error_details_pb2.RequestInfo(request_id=request_id)))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    converted = rpc_status.to_status(status)
    # Aborting replaces the call's trailing metadata, so the request id travels with the status itself.
    return code, _Status(code, converted.details, (*converted.trailing_metadata, ("x-request-id", request_id)))


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, object], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata

"""Typed domain errors with stable codes; the transport maps each code to a status in one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (e.g. `configuration.model`) and what is wrong."""

    field: str
    description: str


class OrchestratorError(Exception):
    """Base of every error the engine raises on purpose; `code` is stable and part of the API."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(OrchestratorError):
    """The request is malformed; `violations` says which fields and why."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class UnknownWorkflowType(InvalidArgument):
    code = "UNKNOWN_WORKFLOW_TYPE"

    def __init__(self, name: str, known: list[str]) -> None:
        description = f"Unknown workflow type {name!r}; known types: {', '.join(known)}"
        super().__init__(description, [FieldViolation("workflow_type", description)])


class SessionNotFound(OrchestratorError):
    code = "NOT_FOUND"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"No workflow session {session_id!r}")
        self.session_id = session_id


class InvalidStateTransition(OrchestratorError):
    """The operation does not fit the workflow's state, e.g. cancelling a finished workflow."""

    code = "FAILED_PRECONDITION"


class IdempotencyConflict(OrchestratorError):
    """A request_id was reused for a different request."""

    code = "ALREADY_EXISTS"


class ResourceExhausted(OrchestratorError):
    """A limit was reached; retrying after `retry_after_seconds` may succeed. `code` says which limit."""

    code = "RESOURCE_EXHAUSTED"
    REASONS = ("RESOURCE_EXHAUSTED", "RATE_LIMITED", "TOO_MANY_ACTIVE_WORKFLOWS", "TOO_MANY_WATCH_STREAMS")

    def __init__(self, message: str, retry_after_seconds: float = 1.0, *, reason: str = "RESOURCE_EXHAUSTED") -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.code = reason


class Unauthenticated(OrchestratorError):
    """The caller presented no valid credentials; `code` says why. The message never holds the credential."""

    code = "UNAUTHENTICATED"
    REASONS = (
        "TOKEN_MISSING",
        "TOKEN_MALFORMED",
        "TOKEN_EXPIRED",
        "TOKEN_NOT_YET_VALID",
        "TOKEN_ISSUER_INVALID",
        "TOKEN_AUDIENCE_INVALID",
        "TOKEN_SIGNATURE_INVALID",
        "TOKEN_ALGORITHM_NOT_ALLOWED",
        "TOKEN_KEY_UNKNOWN",
        "TOKEN_CLAIMS_INVALID",
    )

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = reason


class PermissionDenied(OrchestratorError):
    """The caller is known but may not do this, e.g. a read-only token submitting a workflow."""

    code = "PERMISSION_DENIED"
    REASONS = ("SCOPE_MISSING", "ORIGIN_NOT_ALLOWED")

    def __init__(self, message: str, reason: str = "SCOPE_MISSING") -> None:
        super().__init__(message)
        self.code = reason


class Unavailable(OrchestratorError):
    """The engine cannot take the request now (starting, shutting down, its database out of reach); retrying after
    `retry_after_seconds`, here or on another replica, may work. `code` says why."""

    code = "UNAVAILABLE"
    REASONS = ("UNAVAILABLE", "DATABASE_UNAVAILABLE", "DATABASE_FULL", "SERVER_SHUTTING_DOWN")

    def __init__(self, message: str, retry_after_seconds: float = 1.0, *, reason: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.code = reason


class StoreUnavailable(Unavailable):
    """The database could not take a read or write for a reason that passes (out of reach, locked by another
    writer, out of space): an outage, not a bug. The call may have taken effect or not; reads, and submits with a
    request_id, are safe to repeat."""

    def __init__(self, message: str, retry_after_seconds: float = 2.0, *, full: bool = False) -> None:
        super().__init__(message, retry_after_seconds, reason="DATABASE_FULL" if full else "DATABASE_UNAVAILABLE")


class ServerShuttingDown(Unavailable):
    """This replica is shutting down: what it ended (a watch) resumes on another replica or after the restart."""

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message, retry_after_seconds, reason="SERVER_SHUTTING_DOWN")


class DefinitionError(OrchestratorError):
    """A workflow type file is invalid; raised at start-up with the file and the reason."""

    code = "DEFINITION_ERROR"

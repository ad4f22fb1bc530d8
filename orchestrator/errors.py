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
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(OrchestratorError):
    """The engine cannot take the request now (starting or shutting down); retrying elsewhere may work."""

    code = "UNAVAILABLE"


class DefinitionError(OrchestratorError):
    """A workflow type file is invalid; raised at start-up with the file and the reason."""

    code = "DEFINITION_ERROR"

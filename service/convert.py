"""Protobuf <-> domain conversion, and the validation of what each RPC takes. The only module that knows both."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from orchestrator import models as m
from orchestrator.definitions import WorkflowDefinition
from orchestrator.errors import FieldViolation, InvalidArgument
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import workflow_pb2 as wf

MAX_REQUEST_ID = 128
MAX_SESSION_ID = 100
MAX_REASON = 1000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50

# Explicit tables, tested over every value, so a new enum value cannot slip through as another.
STATE_TO_PB = {
    m.WorkflowState.QUEUED: enums.WORKFLOW_STATE_QUEUED,
    m.WorkflowState.RUNNING: enums.WORKFLOW_STATE_RUNNING,
    m.WorkflowState.COMPLETED: enums.WORKFLOW_STATE_COMPLETED,
    m.WorkflowState.FAILED: enums.WORKFLOW_STATE_FAILED,
    m.WorkflowState.CANCELLED: enums.WORKFLOW_STATE_CANCELLED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}

PRIORITY_TO_PB = {
    m.Priority.LOW: enums.PRIORITY_LOW,
    m.Priority.NORMAL: enums.PRIORITY_NORMAL,
    m.Priority.HIGH: enums.PRIORITY_HIGH,
    m.Priority.CRITICAL: enums.PRIORITY_CRITICAL,
}
PRIORITY_FROM_PB = {v: k for k, v in PRIORITY_TO_PB.items()} | {enums.PRIORITY_UNSPECIFIED: m.Priority.NORMAL}

PHASE_STATE_TO_PB = {
    m.PhaseState.PENDING: enums.PHASE_STATE_PENDING,
    m.PhaseState.RUNNING: enums.PHASE_STATE_RUNNING,
    m.PhaseState.COMPLETED: enums.PHASE_STATE_COMPLETED,
    m.PhaseState.FAILED: enums.PHASE_STATE_FAILED,
    m.PhaseState.SKIPPED: enums.PHASE_STATE_SKIPPED,
    m.PhaseState.CANCELLED: enums.PHASE_STATE_CANCELLED,
}

EVENT_TYPE_TO_PB = {
    m.EventType.WORKFLOW_QUEUED: enums.EVENT_TYPE_WORKFLOW_QUEUED,
    m.EventType.WORKFLOW_STARTED: enums.EVENT_TYPE_WORKFLOW_STARTED,
    m.EventType.PHASE_STARTED: enums.EVENT_TYPE_PHASE_STARTED,
    m.EventType.PHASE_COMPLETED: enums.EVENT_TYPE_PHASE_COMPLETED,
    m.EventType.PHASE_FAILED: enums.EVENT_TYPE_PHASE_FAILED,
    m.EventType.PHASE_SKIPPED: enums.EVENT_TYPE_PHASE_SKIPPED,
    m.EventType.WORKFLOW_COMPLETED: enums.EVENT_TYPE_WORKFLOW_COMPLETED,
    m.EventType.WORKFLOW_FAILED: enums.EVENT_TYPE_WORKFLOW_FAILED,
    m.EventType.WORKFLOW_CANCELLED: enums.EVENT_TYPE_WORKFLOW_CANCELLED,
    m.EventType.HEARTBEAT: enums.EVENT_TYPE_HEARTBEAT,
}

SERVING_TO_PB = {
    m.ServingStatus.SERVING: enums.SERVING_STATUS_SERVING,
    m.ServingStatus.DEGRADED: enums.SERVING_STATUS_DEGRADED,
    m.ServingStatus.NOT_SERVING: enums.SERVING_STATUS_NOT_SERVING,
}


# Requests ---------------------------------------------------------------------------------------------------


def submit_from_proto(request: pb.ExecuteWorkflowRequest, *, max_requirements: int, tenant: str) -> m.SubmitRequest:
    violations: list[FieldViolation] = []
    requirements = request.requirements
    if not requirements.strip():
        violations.append(FieldViolation("requirements", "is required and must not be blank"))
    elif len(requirements) > max_requirements:
        violations.append(
            FieldViolation("requirements", f"is {len(requirements)} characters long; the limit is {max_requirements}")
        )
    if not request.workflow_type.strip():
        violations.append(FieldViolation("workflow_type", "is required; see ListWorkflowTypes"))
    if request.priority not in PRIORITY_FROM_PB:
        violations.append(
            FieldViolation("priority", f"unknown value {request.priority}; use LOW, NORMAL, HIGH or CRITICAL")
        )
    if len(request.request_id) > MAX_REQUEST_ID or not request.request_id.isprintable():
        violations.append(FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID} printable characters"))
    configuration = struct_to_dict(request.configuration) if request.HasField("configuration") else {}
    if violations:
        raise InvalidArgument("invalid request: " + ", ".join(v.field for v in violations), violations)
    return m.SubmitRequest(
        requirements=requirements,
        workflow_type=request.workflow_type.strip(),
        configuration=configuration,
        priority=PRIORITY_FROM_PB[request.priority],
        request_id=request.request_id or None,
        tenant=tenant,
    )


def session_id_from_proto(session_id: str) -> str:
    if not session_id:
        raise InvalidArgument.field("session_id", "is required")
    if len(session_id) > MAX_SESSION_ID or not all(c.isalnum() or c in "-_" for c in session_id):
        raise InvalidArgument.field("session_id", "is not a session id (letters, digits, '-' and '_' only)")
    return session_id


def reason_from_proto(reason: str) -> str:
    if len(reason) > MAX_REASON:
        raise InvalidArgument.field("reason", f"is {len(reason)} characters long; the limit is {MAX_REASON}")
    return reason


def list_query_from_proto(request: pb.ListWorkflowsRequest, *, tenant: str) -> m.ListQuery:
    violations = []
    if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
        violations.append(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
    if request.state != enums.WORKFLOW_STATE_UNSPECIFIED and request.state not in STATE_FROM_PB:
        violations.append(FieldViolation("state", f"unknown value {request.state}"))
    if len(request.page_token) > 500:
        violations.append(FieldViolation("page_token", "is not a token this server issued"))
    if violations:
        raise InvalidArgument("invalid request: " + ", ".join(v.field for v in violations), violations)
    return m.ListQuery(
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        page_token=request.page_token,
        state=STATE_FROM_PB.get(request.state),
        workflow_type=request.workflow_type,
        tenant=tenant,
    )


def struct_to_dict(struct: struct_pb2.Struct, field: str = "configuration") -> dict[str, Any]:
    """The Struct as plain JSON values. Walked by hand rather than with json_format.MessageToDict, which raises
    ValueError on NaN and Infinity (a double can hold them, JSON cannot): they are refused here, field by field."""
    return {key: _from_value(value, f"{field}.{key}") for key, value in struct.fields.items()}


def _from_value(value: struct_pb2.Value, field: str) -> Any:
    match value.WhichOneof("kind"):
        case "number_value":
            number = value.number_value
            if not math.isfinite(number):
                raise InvalidArgument.field(field, "must be a finite number (JSON has no NaN or Infinity)")
            # Struct numbers are doubles: 2 arrives as 2.0. Integral values become ints so integer keys validate.
            return int(number) if number.is_integer() and abs(number) < 2**53 else number
        case "string_value":
            return value.string_value
        case "bool_value":
            return value.bool_value
        case "struct_value":
            return struct_to_dict(value.struct_value, field)
        case "list_value":
            return [_from_value(item, f"{field}[{i}]") for i, item in enumerate(value.list_value.values)]
    return None  # null_value, or a Value with no kind set


# Responses --------------------------------------------------------------------------------------------------


def _ts(value: datetime | None, target: timestamp_pb2.Timestamp) -> None:
    if value is not None:
        target.FromDatetime(value)


def _struct(value: dict[str, Any] | None, target: struct_pb2.Struct) -> None:
    if value:
        target.update(value)


def submit_result_to_proto(result: m.SubmitResult) -> pb.ExecuteWorkflowResponse:
    out = pb.ExecuteWorkflowResponse(
        session_id=result.session_id,
        state=STATE_TO_PB[result.state],
        message=result.message,
        created=result.created,
        warnings=result.warnings,
    )
    _ts(result.created_at, out.created_at)
    _ts(result.estimated_completion, out.estimated_completion)
    return out


def result_to_proto(result: m.WorkflowResult, target: wf.WorkflowResult) -> None:
    for f in result.generated_code:
        target.generated_code.add(path=f.path, language=f.language, content=f.content)
    if result.test_report is not None:
        target.test_report.CopyFrom(wf.TestReport(**result.test_report.model_dump()))
    if result.review is not None:
        target.review.summary = result.review.summary
        target.review.approved = result.review.approved
        for finding in result.review.findings:
            target.review.findings.add(severity=finding.severity, path=finding.path, message=finding.message)
    target.documentation = result.documentation
    usage_to_proto(result.usage, target.usage)
    _struct(result.outputs, target.outputs)


def usage_to_proto(usage: m.Usage, target: wf.Usage) -> None:
    target.input_tokens = usage.input_tokens
    target.output_tokens = usage.output_tokens
    target.requests = usage.requests
    target.cost_usd = usage.cost_usd
    target.models[:] = usage.models


def status_to_proto(status: m.WorkflowStatus) -> pb.GetWorkflowStatusResponse:
    out = pb.GetWorkflowStatusResponse(
        session_id=status.session_id,
        workflow_type=status.workflow_type,
        state=STATE_TO_PB[status.state],
        priority=PRIORITY_TO_PB[status.priority],
        progress=status.progress,
        current_phase=status.current_phase,
        phases_completed=status.phases_completed,
        # `errors` is deprecated but still filled: clients written before error_details read it.
        errors=[e.message for e in status.errors],
        error_details=[wf.WorkflowError(phase=e.phase, code=e.code, message=e.message) for e in status.errors],
        last_sequence=status.last_sequence,
        model=status.model,
        request_id=status.request_id,
    )
    for phase in status.phases:
        item = out.phases.add(
            name=phase.name, agent_role=phase.agent_role, state=PHASE_STATE_TO_PB[phase.state], error=phase.error
        )
        _ts(phase.started_at, item.started_at)
        _ts(phase.finished_at, item.finished_at)
    _struct(status.partial_results, out.partial_results)
    if status.result is not None:
        result_to_proto(status.result, out.result)
    _ts(status.created_at, out.created_at)
    _ts(status.updated_at, out.updated_at)
    _ts(status.finished_at, out.finished_at)
    _ts(status.estimated_completion, out.estimated_completion)
    usage_to_proto(status.usage, out.usage)
    return out


def event_to_proto(event: m.WorkflowEvent) -> pb.WatchWorkflowResponse:
    out = pb.WatchWorkflowResponse(
        session_id=event.session_id,
        sequence=event.sequence,
        type=EVENT_TYPE_TO_PB[event.type],
        phase=event.phase,
        state=STATE_TO_PB[event.state],
        progress=event.progress,
        message=event.message,
    )
    _ts(event.time, out.time)
    _struct(event.data, out.data)
    if event.result is not None:
        result_to_proto(event.result, out.result)
    return out


def page_to_proto(page: m.WorkflowPage) -> pb.ListWorkflowsResponse:
    out = pb.ListWorkflowsResponse(next_page_token=page.next_page_token)
    for s in page.workflows:
        item = out.workflows.add(
            session_id=s.session_id,
            workflow_type=s.workflow_type,
            state=STATE_TO_PB[s.state],
            priority=PRIORITY_TO_PB[s.priority],
            progress=s.progress,
            current_phase=s.current_phase,
        )
        _ts(s.created_at, item.created_at)
        _ts(s.updated_at, item.updated_at)
    return out


def types_to_proto(definitions: list[WorkflowDefinition]) -> pb.ListWorkflowTypesResponse:
    out = pb.ListWorkflowTypesResponse(names=[d.name for d in definitions])
    for d in definitions:
        item = out.workflow_types.add(name=d.name, description=d.description)
        for p in d.phases:
            item.phases.add(
                name=p.name,
                agent_role=p.role,
                depends_on=p.depends_on,
                max_attempts=p.max_attempts,
                timeout_seconds=p.timeout_seconds,
            )
        for key in d.keys().values():
            entry = item.configuration_keys.add(name=key.name, type=key.type, description=key.description)
            if key.default is None:
                entry.default_value.null_value = struct_pb2.NULL_VALUE
            else:
                json_format.ParseDict(key.default, entry.default_value)
    return out


def health_to_proto(report: m.HealthReport) -> pb.HealthResponse:
    out = pb.HealthResponse(status=SERVING_TO_PB[report.status], version=report.version, replica_id=report.replica_id)
    for dep in report.dependencies:
        out.dependencies.add(name=dep.name, status=SERVING_TO_PB[dep.status], message=dep.message)
    _ts(report.time, out.time)
    return out

import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from service.gen.orchestrator.v1 import enums_pb2 as _enums_pb2
from service.gen.orchestrator.v1 import rest_pb2 as _rest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PhaseStatus(_message.Message):
    __slots__ = ("name", "agent_role", "state", "started_at", "finished_at", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent_role: str
    state: _enums_pb2.PhaseState
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, name: _Optional[str] = ..., agent_role: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.PhaseState, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class WorkflowError(_message.Message):
    __slots__ = ("phase", "code", "message")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    code: str
    message: str
    def __init__(self, phase: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GeneratedFile(_message.Message):
    __slots__ = ("path", "language", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    language: str
    content: str
    def __init__(self, path: _Optional[str] = ..., language: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class TestReport(_message.Message):
    __slots__ = ("passed", "failed", "errors", "success", "output", "iterations", "not_run_reason")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    NOT_RUN_REASON_FIELD_NUMBER: _ClassVar[int]
    passed: int
    failed: int
    errors: int
    success: bool
    output: str
    iterations: int
    not_run_reason: str
    def __init__(self, passed: _Optional[int] = ..., failed: _Optional[int] = ..., errors: _Optional[int] = ..., success: _Optional[bool] = ..., output: _Optional[str] = ..., iterations: _Optional[int] = ..., not_run_reason: _Optional[str] = ...) -> None: ...

class ReviewFinding(_message.Message):
    __slots__ = ("severity", "path", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: str
    path: str
    message: str
    def __init__(self, severity: _Optional[str] = ..., path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Review(_message.Message):
    __slots__ = ("summary", "approved", "findings")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    summary: str
    approved: bool
    findings: _containers.RepeatedCompositeFieldContainer[ReviewFinding]
    def __init__(self, summary: _Optional[str] = ..., approved: _Optional[bool] = ..., findings: _Optional[_Iterable[_Union[ReviewFinding, _Mapping]]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "requests", "cost_usd", "models")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    requests: int
    cost_usd: float
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., requests: _Optional[int] = ..., cost_usd: _Optional[float] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkflowResult(_message.Message):
    __slots__ = ("generated_code", "test_report", "review", "documentation", "usage", "outputs")
    GENERATED_CODE_FIELD_NUMBER: _ClassVar[int]
    TEST_REPORT_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    generated_code: _containers.RepeatedCompositeFieldContainer[GeneratedFile]
    test_report: TestReport
    review: Review
    documentation: str
    usage: Usage
    outputs: _struct_pb2.Struct
    def __init__(self, generated_code: _Optional[_Iterable[_Union[GeneratedFile, _Mapping]]] = ..., test_report: _Optional[_Union[TestReport, _Mapping]] = ..., review: _Optional[_Union[Review, _Mapping]] = ..., documentation: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class WorkflowSummary(_message.Message):
    __slots__ = ("session_id", "workflow_type", "state", "priority", "progress", "current_phase", "created_at", "updated_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PHASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    workflow_type: str
    state: _enums_pb2.WorkflowState
    priority: _enums_pb2.Priority
    progress: int
    current_phase: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., workflow_type: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.WorkflowState, str]] = ..., priority: _Optional[_Union[_enums_pb2.Priority, str]] = ..., progress: _Optional[int] = ..., current_phase: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConfigurationKey(_message.Message):
    __slots__ = ("name", "type", "description", "default_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    description: str
    default_value: _struct_pb2.Value
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., description: _Optional[str] = ..., default_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class PhaseDefinition(_message.Message):
    __slots__ = ("name", "agent_role", "depends_on", "max_attempts", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ROLE_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent_role: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    max_attempts: int
    timeout_seconds: float
    def __init__(self, name: _Optional[str] = ..., agent_role: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., max_attempts: _Optional[int] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class WorkflowType(_message.Message):
    __slots__ = ("name", "description", "phases", "configuration_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    phases: _containers.RepeatedCompositeFieldContainer[PhaseDefinition]
    configuration_keys: _containers.RepeatedCompositeFieldContainer[ConfigurationKey]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., phases: _Optional[_Iterable[_Union[PhaseDefinition, _Mapping]]] = ..., configuration_keys: _Optional[_Iterable[_Union[ConfigurationKey, _Mapping]]] = ...) -> None: ...

class DependencyHealth(_message.Message):
    __slots__ = ("name", "status", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: _enums_pb2.ServingStatus
    message: str
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[_enums_pb2.ServingStatus, str]] = ..., message: _Optional[str] = ...) -> None: ...

import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from service.gen.orchestrator.v1 import enums_pb2 as _enums_pb2
from service.gen.orchestrator.v1 import rest_pb2 as _rest_pb2
from service.gen.orchestrator.v1 import workflow_pb2 as _workflow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteWorkflowRequest(_message.Message):
    __slots__ = ("requirements", "workflow_type", "configuration", "priority", "request_id")
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    requirements: str
    workflow_type: str
    configuration: _struct_pb2.Struct
    priority: _enums_pb2.Priority
    request_id: str
    def __init__(self, requirements: _Optional[str] = ..., workflow_type: _Optional[str] = ..., configuration: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., priority: _Optional[_Union[_enums_pb2.Priority, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ExecuteWorkflowResponse(_message.Message):
    __slots__ = ("session_id", "state", "message", "created_at", "estimated_completion", "created", "warnings")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: _enums_pb2.WorkflowState
    message: str
    created_at: _timestamp_pb2.Timestamp
    estimated_completion: _timestamp_pb2.Timestamp
    created: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.WorkflowState, str]] = ..., message: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., estimated_completion: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetWorkflowStatusRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetWorkflowStatusResponse(_message.Message):
    __slots__ = ("session_id", "workflow_type", "state", "priority", "progress", "current_phase", "phases_completed", "phases", "errors", "partial_results", "result", "created_at", "updated_at", "finished_at", "estimated_completion", "last_sequence", "model", "request_id", "usage", "error_details")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASES_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COMPLETION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAILS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    workflow_type: str
    state: _enums_pb2.WorkflowState
    priority: _enums_pb2.Priority
    progress: int
    current_phase: str
    phases_completed: _containers.RepeatedScalarFieldContainer[str]
    phases: _containers.RepeatedCompositeFieldContainer[_workflow_pb2.PhaseStatus]
    errors: _containers.RepeatedScalarFieldContainer[str]
    partial_results: _struct_pb2.Struct
    result: _workflow_pb2.WorkflowResult
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    estimated_completion: _timestamp_pb2.Timestamp
    last_sequence: int
    model: str
    request_id: str
    usage: _workflow_pb2.Usage
    error_details: _containers.RepeatedCompositeFieldContainer[_workflow_pb2.WorkflowError]
    def __init__(self, session_id: _Optional[str] = ..., workflow_type: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.WorkflowState, str]] = ..., priority: _Optional[_Union[_enums_pb2.Priority, str]] = ..., progress: _Optional[int] = ..., current_phase: _Optional[str] = ..., phases_completed: _Optional[_Iterable[str]] = ..., phases: _Optional[_Iterable[_Union[_workflow_pb2.PhaseStatus, _Mapping]]] = ..., errors: _Optional[_Iterable[str]] = ..., partial_results: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result: _Optional[_Union[_workflow_pb2.WorkflowResult, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., estimated_completion: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_sequence: _Optional[int] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., usage: _Optional[_Union[_workflow_pb2.Usage, _Mapping]] = ..., error_details: _Optional[_Iterable[_Union[_workflow_pb2.WorkflowError, _Mapping]]] = ...) -> None: ...

class WatchWorkflowRequest(_message.Message):
    __slots__ = ("session_id", "after_sequence")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    after_sequence: int
    def __init__(self, session_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchWorkflowResponse(_message.Message):
    __slots__ = ("session_id", "sequence", "type", "time", "phase", "state", "progress", "message", "data", "result")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    sequence: int
    type: _enums_pb2.EventType
    time: _timestamp_pb2.Timestamp
    phase: str
    state: _enums_pb2.WorkflowState
    progress: int
    message: str
    data: _struct_pb2.Struct
    result: _workflow_pb2.WorkflowResult
    def __init__(self, session_id: _Optional[str] = ..., sequence: _Optional[int] = ..., type: _Optional[_Union[_enums_pb2.EventType, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phase: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.WorkflowState, str]] = ..., progress: _Optional[int] = ..., message: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result: _Optional[_Union[_workflow_pb2.WorkflowResult, _Mapping]] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelWorkflowResponse(_message.Message):
    __slots__ = ("session_id", "state", "message")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: _enums_pb2.WorkflowState
    message: str
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.WorkflowState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "workflow_type")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: _enums_pb2.WorkflowState
    workflow_type: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[_enums_pb2.WorkflowState, str]] = ..., workflow_type: _Optional[str] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_page_token")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[_workflow_pb2.WorkflowSummary]
    next_page_token: str
    def __init__(self, workflows: _Optional[_Iterable[_Union[_workflow_pb2.WorkflowSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListWorkflowTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkflowTypesResponse(_message.Message):
    __slots__ = ("workflow_types", "names")
    WORKFLOW_TYPES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    workflow_types: _containers.RepeatedCompositeFieldContainer[_workflow_pb2.WorkflowType]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workflow_types: _Optional[_Iterable[_Union[_workflow_pb2.WorkflowType, _Mapping]]] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "dependencies", "version", "replica_id", "time")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    status: _enums_pb2.ServingStatus
    dependencies: _containers.RepeatedCompositeFieldContainer[_workflow_pb2.DependencyHealth]
    version: str
    replica_id: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[_enums_pb2.ServingStatus, str]] = ..., dependencies: _Optional[_Iterable[_Union[_workflow_pb2.DependencyHealth, _Mapping]]] = ..., version: _Optional[str] = ..., replica_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

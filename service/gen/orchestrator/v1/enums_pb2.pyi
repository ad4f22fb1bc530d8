from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STATE_UNSPECIFIED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_QUEUED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_RUNNING: _ClassVar[WorkflowState]
    WORKFLOW_STATE_COMPLETED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_FAILED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_CANCELLED: _ClassVar[WorkflowState]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_CRITICAL: _ClassVar[Priority]

class PhaseState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_STATE_UNSPECIFIED: _ClassVar[PhaseState]
    PHASE_STATE_PENDING: _ClassVar[PhaseState]
    PHASE_STATE_RUNNING: _ClassVar[PhaseState]
    PHASE_STATE_COMPLETED: _ClassVar[PhaseState]
    PHASE_STATE_FAILED: _ClassVar[PhaseState]
    PHASE_STATE_SKIPPED: _ClassVar[PhaseState]
    PHASE_STATE_CANCELLED: _ClassVar[PhaseState]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_QUEUED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_STARTED: _ClassVar[EventType]
    EVENT_TYPE_PHASE_STARTED: _ClassVar[EventType]
    EVENT_TYPE_PHASE_COMPLETED: _ClassVar[EventType]
    EVENT_TYPE_PHASE_FAILED: _ClassVar[EventType]
    EVENT_TYPE_PHASE_SKIPPED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_COMPLETED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_FAILED: _ClassVar[EventType]
    EVENT_TYPE_WORKFLOW_CANCELLED: _ClassVar[EventType]
    EVENT_TYPE_HEARTBEAT: _ClassVar[EventType]

class ServingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVING_STATUS_UNSPECIFIED: _ClassVar[ServingStatus]
    SERVING_STATUS_SERVING: _ClassVar[ServingStatus]
    SERVING_STATUS_DEGRADED: _ClassVar[ServingStatus]
    SERVING_STATUS_NOT_SERVING: _ClassVar[ServingStatus]
WORKFLOW_STATE_UNSPECIFIED: WorkflowState
WORKFLOW_STATE_QUEUED: WorkflowState
WORKFLOW_STATE_RUNNING: WorkflowState
WORKFLOW_STATE_COMPLETED: WorkflowState
WORKFLOW_STATE_FAILED: WorkflowState
WORKFLOW_STATE_CANCELLED: WorkflowState
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
PRIORITY_CRITICAL: Priority
PHASE_STATE_UNSPECIFIED: PhaseState
PHASE_STATE_PENDING: PhaseState
PHASE_STATE_RUNNING: PhaseState
PHASE_STATE_COMPLETED: PhaseState
PHASE_STATE_FAILED: PhaseState
PHASE_STATE_SKIPPED: PhaseState
PHASE_STATE_CANCELLED: PhaseState
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_WORKFLOW_QUEUED: EventType
EVENT_TYPE_WORKFLOW_STARTED: EventType
EVENT_TYPE_PHASE_STARTED: EventType
EVENT_TYPE_PHASE_COMPLETED: EventType
EVENT_TYPE_PHASE_FAILED: EventType
EVENT_TYPE_PHASE_SKIPPED: EventType
EVENT_TYPE_WORKFLOW_COMPLETED: EventType
EVENT_TYPE_WORKFLOW_FAILED: EventType
EVENT_TYPE_WORKFLOW_CANCELLED: EventType
EVENT_TYPE_HEARTBEAT: EventType
SERVING_STATUS_UNSPECIFIED: ServingStatus
SERVING_STATUS_SERVING: ServingStatus
SERVING_STATUS_DEGRADED: ServingStatus
SERVING_STATUS_NOT_SERVING: ServingStatus

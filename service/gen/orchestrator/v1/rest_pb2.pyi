from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
REST_FIELD_NUMBER: _ClassVar[int]
rest: _descriptor.FieldDescriptor

class RestField(_message.Message):
    __slots__ = ("name", "inline", "constant", "hidden")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    inline: bool
    constant: str
    hidden: bool
    def __init__(self, name: _Optional[str] = ..., inline: _Optional[bool] = ..., constant: _Optional[str] = ..., hidden: _Optional[bool] = ...) -> None: ...

"""Adapts the generated descriptor set (gateway/orchestrator.pb) to what Envoy's JSON transcoder accepts.

Envoy 1.40 refuses to start when a `google.api.http` rule sets `response_body` on a field that is not a
`google.api.HttpBody` ("Setting response_body is not supported yet for non-HttpBody fields", envoyproxy/envoy
#11136, closed unimplemented). The contract sets it on GetWorkflowStatus and WatchWorkflow, so Envoy loads a
copy with those settings cleared, and config.py restores the documented body (the field, not the whole
response) with a small Lua filter on exactly those methods. Source comments are dropped as well: Envoy never
reads them and they make up most of the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]  # no py.typed
from google.protobuf import descriptor_pb2

_HTTP_BODY: str = ".google.api.HttpBody"
# Nested paths (`a.b`) are not supported: the Lua unwrap strips exactly one level.
_JSON_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ResponseBody:
    """A method whose REST body should be one field of its response (`response_body`), which Envoy ignores."""

    grpc_path: str  # e.g. /orchestrator.v1.OrchestratorService/GetWorkflowStatus
    field: str  # the proto field name, which is also its JSON key (preserve_proto_field_names)
    server_streaming: bool


@dataclass(frozen=True)
class EnvoyDescriptor:
    """A descriptor set Envoy can load, and the `response_body` settings it had to drop from it."""

    data: bytes
    response_bodies: tuple[ResponseBody, ...]


def envoy_descriptor(path: Path) -> EnvoyDescriptor:
    """Reads the descriptor set at `path` and returns a copy Envoy 1.40's transcoder accepts."""
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(path.read_bytes())
    messages = {
        f".{file.package}.{message.name}" if file.package else f".{message.name}": message
        for file in files.file
        for message in file.message_type
    }
    dropped: list[ResponseBody] = []
    for file in files.file:
        file.ClearField("source_code_info")
        for service in file.service:
            service_name = f"{file.package}.{service.name}" if file.package else service.name
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                rules = [rule, *rule.additional_bindings]
                field = _unsupported_response_body(rules, messages.get(method.output_type))
                if field is None:
                    continue
                for each in rules:
                    each.ClearField("response_body")
                dropped.append(ResponseBody(f"/{service_name}/{method.name}", field, method.server_streaming))
    return EnvoyDescriptor(files.SerializeToString(deterministic=True), tuple(dropped))


def _unsupported_response_body(
    rules: list[http_pb2.HttpRule], output: descriptor_pb2.DescriptorProto | None
) -> str | None:
    fields: set[str] = {str(rule.response_body) for rule in rules}
    if fields == {""}:
        return None
    if len(fields) > 1:
        # The REST body is restored per gRPC method, so every binding must agree on it.
        raise ValueError(f"bindings of one method disagree on response_body: {sorted(fields)}")
    (name,) = fields
    field = next((f for f in output.field if f.name == name), None) if output is not None else None
    if field is not None and field.type_name == _HTTP_BODY:
        return None  # the one case Envoy supports
    if not _JSON_KEY.fullmatch(name):
        raise ValueError(f"response_body {name!r} is not a plain field name")
    return name

"""docs/openapi.json against the contract: the same REST paths as the protos' google.api.http rules, Envoy's JSON
conventions (proto field names, enums and int64 as strings), google.rpc.Status errors, and the watch stream's
real framing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from tests.docs.openapi_check import OPENAPI, ROOT, load, resolve, response_schema

pytestmark = pytest.mark.timeout(30)

DESCRIPTOR = ROOT / "gateway" / "orchestrator.pb"
SERVICE = "OrchestratorService"
Field = descriptor_pb2.FieldDescriptorProto


def descriptors() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())


def messages() -> dict[str, descriptor_pb2.DescriptorProto]:
    return {
        f"{file.package}.{message.name}": message
        for file in descriptors().file
        if file.package == "orchestrator.v1"
        for message in file.message_type
    }


def http_rules() -> dict[tuple[str, str], descriptor_pb2.MethodDescriptorProto]:
    found = {}
    for file in descriptors().file:
        for service in file.service:
            if service.name != SERVICE:
                continue
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    kind = binding.WhichOneof("pattern")
                    assert kind != "custom"
                    found[(kind.upper(), getattr(binding, kind))] = method
    return found


def operations() -> dict[tuple[str, str], dict[str, object]]:
    return {(verb.upper(), path): op for path, item in load()["paths"].items() for verb, op in item.items()}


def test_every_documented_path_is_an_http_rule_and_every_rule_is_documented() -> None:
    assert set(operations()) == set(http_rules())


def test_parameters_are_what_envoy_binds() -> None:
    rules, all_messages = http_rules(), messages()
    for key, op in operations().items():
        verb, path = key
        request = all_messages[rules[key].input_type.lstrip(".")]
        in_path = set(re.findall(r"{(\w+)}", path))
        params = {(p["name"], p["in"]) for p in op.get("parameters", [])}  # type: ignore[attr-defined]
        assert {name for name, where in params if where == "path"} == in_path, key
        if verb == "GET":
            # Every other request field is a query parameter; Envoy refuses any other one.
            assert {name for name, where in params if where == "query"} == {f.name for f in request.field} - in_path
            assert "requestBody" not in op
        else:  # body: "*", without the fields the path carries (Envoy refuses a body field that repeats one)
            body = resolve(load(), op["requestBody"]["content"]["application/json"]["schema"])  # type: ignore[index]
            assert set(body["properties"]) == {f.name for f in request.field} - in_path, key


def test_fields_use_proto_names_and_proto3_json_types() -> None:
    doc, schemas = load(), load()["components"]["schemas"]
    for full, message in messages().items():
        name = "v1" + full.rsplit(".", 1)[1]
        if name not in schemas:
            continue  # a GET request: its fields are the query parameters above
        properties = schemas[name]["properties"]
        assert set(properties) == {f.name for f in message.field}, name  # snake_case, as Envoy prints them
        for field in message.field:
            schema = properties[field.name]
            if field.label == Field.LABEL_REPEATED:
                schema = schema["items"]
            schema = resolve(doc, schema["allOf"][0]) if "allOf" in schema else resolve(doc, schema)
            if field.type in (Field.TYPE_INT64, Field.TYPE_UINT64):
                assert (schema["type"], schema["format"]) == ("string", "int64"), (name, field.name)
            elif field.type == Field.TYPE_ENUM:
                assert schema["type"] == "string" and all(v.isupper() for v in schema["enum"]), (name, field.name)
            elif field.type_name == ".google.protobuf.Timestamp":
                assert (schema["type"], schema["format"]) == ("string", "date-time")
            elif field.type_name == ".google.protobuf.Struct":
                assert schema == {"type": "object", "additionalProperties": {}, "description": "Any JSON object."}


def test_enums_list_every_proto_value_by_name() -> None:
    schemas = load()["components"]["schemas"]
    for file in descriptors().file:
        if file.package != "orchestrator.v1":
            continue
        for enum in file.enum_type:
            assert schemas["v1" + enum.name]["enum"] == [v.name for v in enum.value]


def test_every_operation_documents_google_rpc_status_errors() -> None:
    doc = load()
    for key, op in operations().items():
        error = resolve(doc, op["responses"]["default"])  # type: ignore[index]
        status = resolve(doc, error["content"]["application/json"]["schema"])
        assert set(status["properties"]) == {"code", "message", "details"}, key
        assert resolve(doc, status["properties"]["details"]["items"])["required"] == ["@type"]
    for detail in ("BadRequest", "ErrorInfo", "RequestInfo", "RetryInfo"):
        schema = doc["components"]["schemas"][f"rpc{detail}"]
        assert schema["properties"]["@type"]["enum"] == [f"type.googleapis.com/google.rpc.{detail}"]
    violation = doc["components"]["schemas"]["rpcBadRequestFieldViolation"]
    assert {"field", "description"} <= set(violation["properties"])


def test_the_watch_stream_is_described_as_ndjson_and_server_sent_events() -> None:
    doc = load()
    for path in ("/workflow-events/{session_id}", "/api/v1/workflow-events/{session_id}"):
        ok = doc["paths"][path]["get"]["responses"]["200"]
        assert set(ok["content"]) == {"application/x-ndjson", "text/event-stream"}
        assert ok["content"]["application/x-ndjson"]["schema"] == {
            "$ref": "#/components/schemas/v1WatchWorkflowResponse"
        }
        assert ok["content"]["text/event-stream"]["example"].startswith("data: {")
        assert "one JSON object per line" in ok["description"]
    # Only the stream: every unary operation answers plain JSON.
    streams = {key for key, op in operations().items() if "application/x-ndjson" in op["responses"]["200"]["content"]}  # type: ignore[index]
    assert streams == {("GET", "/workflow-events/{session_id}"), ("GET", "/api/v1/workflow-events/{session_id}")}
    assert response_schema(doc, "GET", "/health") == {"$ref": "#/components/schemas/v1HealthResponse"}


def test_every_reference_resolves_and_operation_ids_are_unique() -> None:
    doc = load()
    text = OPENAPI.read_text()
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        resolve(doc, {"$ref": ref})
    ids = [op["operationId"] for op in operations().values()]
    assert len(ids) == len(set(ids))


def test_the_service_serves_the_generated_document() -> None:
    # service/openapi.json is a link to it, so that an installed package carries the document.
    served = ROOT / "service" / "openapi.json"
    assert served.read_bytes() == OPENAPI.read_bytes()
    assert Path(served).resolve() == OPENAPI.resolve()

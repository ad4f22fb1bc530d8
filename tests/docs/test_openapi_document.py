"""docs/openapi.json against the contract: the same REST paths as the protos' google.api.http rules, the REST
face's JSON (the guide's names and lower-case words, int64 as strings), the guide's error bodies, and the watch
stream's real framing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway import restface
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
            # Every other request field is a query parameter, by its REST name; Envoy refuses any other one.
            face = restface.load_rules().requests[rules_key(rules[key].input_type)]
            expected = {face[f.name].get("name", f.name) for f in request.field} - in_path
            assert {name for name, where in params if where == "query"} == expected
            assert "requestBody" not in op
        else:  # body: "*", without the fields the path carries (Envoy refuses a body field that repeats one)
            body = resolve(load(), op["requestBody"]["content"]["application/json"]["schema"])  # type: ignore[index]
            assert set(body["properties"]) == {f.name for f in request.field} - in_path, key


def rules_key(type_name: str) -> str:
    return type_name.lstrip(".")


def rest_keys(full: str, all_messages: dict[str, descriptor_pb2.DescriptorProto]) -> dict[str, Field]:
    """REST key -> field, as the REST face prints `full`: renamed, hidden and inlined fields applied."""
    rules = restface.load_rules().responses.get(full, {})
    keys: dict[str, Field] = {}
    inlined: list[str] = []
    for field in all_messages[full].field:
        rule = rules.get(field.name, {})
        if rule.get("hidden"):
            continue
        if rule.get("inline"):
            inlined.append(field.type_name.lstrip("."))
            continue
        keys[rule.get("name", field.name)] = field
    for inner in inlined:
        for key, field in rest_keys(inner, all_messages).items():
            keys.setdefault(key, field)
    return keys


def test_fields_are_the_rest_faces_with_proto3_json_types() -> None:
    doc, schemas, all_messages = load(), load()["components"]["schemas"], messages()
    for full in all_messages:
        name = "v1" + full.rsplit(".", 1)[1]
        if name not in schemas:
            continue  # a GET request: its fields are the query parameters above
        properties = schemas[name]["properties"]
        keys = rest_keys(full, all_messages)
        assert set(properties) == set(keys), name  # snake_case, the guide's names
        for key, field in keys.items():
            schema = properties[key]
            if "enum" in schema and len(schema["enum"]) == 1 and schema.get("type") == "string":
                continue  # a constant on REST (`"status": "accepted"`)
            if field.label == Field.LABEL_REPEATED:
                schema = schema["items"]
            schema = resolve(doc, schema["allOf"][0]) if "allOf" in schema else resolve(doc, schema)
            if field.type in (Field.TYPE_INT64, Field.TYPE_UINT64):
                assert (schema["type"], schema["format"]) == ("string", "int64"), (name, field.name)
            elif field.type == Field.TYPE_ENUM:
                assert schema["type"] == "string" and all(v.islower() for v in schema["enum"]), (name, field.name)
            elif field.type_name == ".google.protobuf.Timestamp":
                assert (schema["type"], schema["format"]) == ("string", "date-time")
            elif field.type_name == ".google.protobuf.Struct":
                assert schema == {"type": "object", "additionalProperties": {}, "description": "Any JSON object."}


def test_enums_list_every_proto_value_as_its_rest_word() -> None:
    schemas = load()["components"]["schemas"]
    for file in descriptors().file:
        if file.package != "orchestrator.v1":
            continue
        for enum in file.enum_type:
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
            words = [v.name.removeprefix(prefix).lower() for v in enum.value if v.number != 0]
            assert schemas["v1" + enum.name]["enum"] == words, enum.name
    assert schemas["v1Priority"]["enum"] == ["low", "normal", "high", "critical"]  # the guide's pattern
    assert schemas["v1WorkflowState"]["enum"] == ["queued", "running", "completed", "failed", "cancelled"]


def test_every_operation_documents_the_guides_error_body() -> None:
    doc = load()
    guide_fields = {"error", "message", "details", "timestamp", "request_id", "detail"}
    for key, op in operations().items():
        error = resolve(doc, op["responses"]["default"])  # type: ignore[index]
        body = resolve(doc, error["content"]["application/json"]["schema"])
        assert set(body["properties"]) == guide_fields == set(body["required"]), key
        assert body["properties"]["detail"]["type"] == "string"
        if "requestBody" in op:
            invalid = resolve(doc, op["responses"]["422"])  # type: ignore[index]
            listed = resolve(doc, invalid["content"]["application/json"]["schema"])
            assert set(listed["properties"]) == guide_fields, key
            problem = resolve(doc, listed["properties"]["detail"]["items"])
            assert {"loc", "msg", "type"} == set(problem["required"])


def test_the_watch_stream_is_described_as_ndjson_and_server_sent_events() -> None:
    doc = load()
    for path in ("/workflow-events/{session_id}", "/api/v1/workflow-events/{session_id}"):
        ok = doc["paths"][path]["get"]["responses"]["200"]
        assert set(ok["content"]) == {"application/x-ndjson", "text/event-stream"}
        assert ok["content"]["application/x-ndjson"]["schema"] == {
            "$ref": "#/components/schemas/v1WatchWorkflowResponse"
        }
        assert ok["content"]["text/event-stream"]["example"].startswith("id: 1\ndata: {")
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

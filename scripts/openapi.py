"""Finishes the OpenAPI 3 document that protoc-gen-swagger (grpc-gateway v1) and swagger2openapi make from the
protos, so that it describes the REST API the way Envoy's transcoder really serves it.

The generator knows nothing of Envoy's settings and predates some protobuf JSON rules, so this step, driven by
the same descriptor set Envoy loads: turns Struct/Value into free JSON, drops path fields from request bodies
(Envoy refuses a body field that collides with one), marks the fields Envoy always prints as required
(`always_print_primitive_fields`), adds the google.rpc.Status error body with its detail types, and describes
the server stream as what it is on the wire: NDJSON, or Server-Sent Events.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

JsonDict = dict[str, Any]
Field = descriptor_pb2.FieldDescriptorProto

TITLE = "Agent Orchestrator REST API"
API_VERSION = "v1"
ALIAS_PREFIX = "/api/v1/"
ALIAS_TAG_SUFFIX = " (/api/v1 aliases)"
SCHEMAS = "#/components/schemas/"

CONVENTIONS = """\
Served by an Envoy sidecar that transcodes JSON to the gRPC service; the protobuf files are the source of truth.

- JSON uses the proto field names (snake_case). Enums are strings such as `WORKFLOW_STATE_RUNNING`; 64-bit
  integers are JSON strings; timestamps are RFC 3339 strings.
- Responses print every scalar, enum and list field, zero values included; message fields (timestamps, `result`)
  are left out while unset.
- Unknown query parameters are refused with 400; unknown JSON body fields are ignored.
- Every error is a JSON `google.rpc.Status` whose `details` carry a `google.rpc.BadRequest` (invalid fields),
  an `ErrorInfo` and a `RequestInfo` (the `x-request-id`).
- `GET /workflow-events/{session_id}` streams: one JSON event per line, or Server-Sent Events when the request
  accepts `text/event-stream`."""

ERROR_DESCRIPTION = """\
A `google.rpc.Status`. The HTTP status follows its gRPC `code`: INVALID_ARGUMENT, FAILED_PRECONDITION and \
OUT_OF_RANGE 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS and ABORTED 409, \
RESOURCE_EXHAUSTED 429, CANCELLED 499, INTERNAL, UNKNOWN and DATA_LOSS 500, UNIMPLEMENTED 501, UNAVAILABLE 503, \
DEADLINE_EXCEEDED 504."""

STREAM_DESCRIPTION = """\
A stream of `{item}` messages, sent as they happen; the HTTP status is decided before the first one.

- `application/x-ndjson` (the default): one JSON object per line. Envoy labels it `Content-Type: \
application/json` all the same: read it line by line, not as one document.
- `text/event-stream` (when the request's `Accept` includes it): Server-Sent Events, each message on one \
`data:` line followed by a blank line; no `id:` or `event:` fields.

An error after the first message cannot change the status: the stream just ends. Read to the terminal event; \
to resume after a dropped connection, ask again with `after_sequence` set to the last sequence received."""

SSE_EXAMPLE = 'data: {"session_id":"6f1c...","sequence":"1","type":"EVENT_TYPE_WORKFLOW_QUEUED",...}\n\n'

# The google.rpc details this service (and Envoy's own replies) put into Status.details.
ERROR_DETAILS = ("BadRequest", "ErrorInfo", "RequestInfo", "RetryInfo")

# Well-known types whose proto3 JSON form is not the message the generator describes.
FREE_JSON: dict[str, JsonDict] = {
    "protobufStruct": {"type": "object", "additionalProperties": {}, "description": "Any JSON object."},
    "protobufValue": {"description": "Any JSON value: null, a number, a string, a boolean, an array or an object."},
    "protobufListValue": {"type": "array", "items": {}, "description": "Any JSON array."},
}
_SCALARS: dict[int, JsonDict] = {
    Field.TYPE_STRING: {"type": "string"},
    Field.TYPE_BOOL: {"type": "boolean"},
    Field.TYPE_BYTES: {"type": "string", "format": "byte"},
    Field.TYPE_DOUBLE: {"type": "number", "format": "double"},
    Field.TYPE_FLOAT: {"type": "number", "format": "float"},
    Field.TYPE_INT32: {"type": "integer", "format": "int32"},
    Field.TYPE_SINT32: {"type": "integer", "format": "int32"},
    Field.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    Field.TYPE_UINT32: {"type": "integer", "format": "int64"},
    Field.TYPE_FIXED32: {"type": "integer", "format": "int64"},
    Field.TYPE_INT64: {"type": "string", "format": "int64"},
    Field.TYPE_SINT64: {"type": "string", "format": "int64"},
    Field.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    Field.TYPE_UINT64: {"type": "string", "format": "uint64"},
    Field.TYPE_FIXED64: {"type": "string", "format": "uint64"},
}
_WELL_KNOWN: dict[str, JsonDict] = {
    ".google.protobuf.Duration": {"type": "string", "description": "Seconds with a suffix `s`, e.g. `1.5s`."},
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Any": {"$ref": SCHEMAS + "protobufAny"},
}


class Protos:
    """The descriptor set, indexed the way the generator names things, with the comments of every element."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, str]] = {}  # full name -> (message, comment)
        self.field_comments: dict[tuple[str, str], str] = {}  # (message full name, field) -> comment
        self.schema_names: dict[str, str] = {}  # the generator's schema name -> message full name
        self.bindings: dict[tuple[str, str], descriptor_pb2.MethodDescriptorProto] = {}  # (verb, path) -> method
        self.service_comments: list[str] = []
        for file in files.file:
            comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
            short_package = file.package.rsplit(".", 1)[-1]
            for index, message in enumerate(file.message_type):
                self._add(f"{file.package}.{message.name}", short_package + message.name, message, (4, index), comments)
            for s_index, service in enumerate(file.service):
                self.service_comments.append(_clean(comments.get((6, s_index), "")))
                for method in service.method:
                    rule = method.options.Extensions[annotations_pb2.http]
                    for binding in [rule, *rule.additional_bindings]:
                        self.bindings[_verb_path(binding)] = method

    def _add(
        self,
        full: str,
        schema_name: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        # The generator's naming: the last package component, then the message names (nested ones concatenated).
        self.messages[full] = (message, _clean(comments.get(path, "")))
        self.schema_names[schema_name] = full
        for index, field in enumerate(message.field):
            self.field_comments[(full, field.name)] = _clean(comments.get((*path, 2, index), ""))
        for index, nested in enumerate(message.nested_type):
            self._add(f"{full}.{nested.name}", schema_name + nested.name, nested, (*path, 3, index), comments)

    def schema_name(self, full: str) -> str:
        return {message: name for name, message in self.schema_names.items()}[full]


def finish(doc: JsonDict, files: descriptor_pb2.FileDescriptorSet) -> JsonDict:
    """Returns the finished document; `doc` is swagger2openapi's output, `files` the descriptor set with source
    info that Envoy's config is built from."""
    doc = copy.deepcopy(doc)
    protos = Protos(files)
    schemas: JsonDict = doc["components"]["schemas"]
    _walk(doc, _tidy)
    schemas.update(copy.deepcopy(FREE_JSON))

    request_roots: set[str] = set()
    response_roots: set[str] = set()
    for path, verb, op in _operations(doc):
        method = protos.bindings[(verb.upper(), path)]
        _describe_operation(op, method.name, alias=path.startswith(ALIAS_PREFIX))
        path_fields = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        if "requestBody" in op:
            op["requestBody"] = _request_body(doc, op["requestBody"], path_fields, method.name)
            request_roots |= _refs(op["requestBody"])
        ok = op["responses"]["200"]
        response_roots |= _refs(ok)
        if method.server_streaming:
            _describe_stream(ok)
        op["responses"]["default"] = {"$ref": "#/components/responses/Error"}
    doc["components"].pop("requestBodies", None)

    requests, responses = _closure(schemas, request_roots), _closure(schemas, response_roots)
    for name in sorted(requests | responses):
        schema = schemas[name]
        full = protos.schema_names.get(name)
        if full is None or "properties" not in schema:
            continue
        message = protos.messages[full][0]
        if name in requests:
            required = [f for f, p in schema["properties"].items() if p.get("description", "").startswith("Required.")]
        else:
            required = [f.name for f in message.field if _always_printed(f)]
        if required:
            schema["required"] = required

    _collect_garbage(doc)
    _add_errors(doc, protos)
    doc["components"]["schemas"] = dict(sorted(schemas.items()))
    service_comment = "\n\n".join(c for c in protos.service_comments if c)
    doc["info"] = {"title": TITLE, "version": API_VERSION, "description": f"{service_comment}\n\n{CONVENTIONS}"}
    doc["servers"] = [{"url": "/"}]
    tags = sorted({tag for _, _, op in _operations(doc) for tag in op.get("tags", [])}, key=lambda t: (len(t), t))
    aliases = {"description": "The same operations under `/api/v1`."}
    doc["tags"] = [{"name": tag} | (aliases if tag.endswith(ALIAS_TAG_SUFFIX) else {}) for tag in tags]
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    if len(ids) != len(set(ids)):
        raise ValueError(f"operationIds must be unique: {sorted(ids)}")
    order = ["openapi", "info", "servers", "tags", "paths", "components"]
    return {key: doc[key] for key in order} | {k: v for k, v in doc.items() if k not in order}


# --- operations ---------------------------------------------------------------------------------


def _operations(doc: JsonDict) -> list[tuple[str, str, JsonDict]]:
    paths: JsonDict = doc["paths"]
    return [(path, verb, op) for path, item in paths.items() for verb, op in item.items() if verb != "parameters"]


def _describe_operation(op: JsonDict, method: str, *, alias: bool) -> None:
    text = "\n\n".join(part for part in (op.pop("summary", ""), op.pop("description", "")) if part)
    summary = _first_sentence(_reflow(text))
    op["summary"] = summary
    if rest := _reflow(text)[len(summary) :].strip():
        op["description"] = rest
    # The generator numbers additional bindings (`CancelWorkflow2`); name the /api/v1 aliases after what they are.
    op["operationId"] = f"{method}ApiV1" if alias else method
    if alias:
        op["tags"] = [tag + ALIAS_TAG_SUFFIX for tag in op.get("tags", [])]


def _request_body(doc: JsonDict, body: JsonDict, path_fields: list[str], method: str) -> JsonDict:
    if "$ref" in body:
        body = doc["components"]["requestBodies"][body["$ref"].rsplit("/", 1)[-1]]
    body = copy.deepcopy(body)
    media = body["content"]["application/json"]
    if path_fields:
        # With `body: "*"`, every field not bound to the path comes from the body; Envoy refuses a body field
        # that repeats a path field (reject_binding_body_field_collisions), so the body schema leaves them out.
        schemas = doc["components"]["schemas"]
        source = schemas[media["schema"]["$ref"].removeprefix(SCHEMAS)]
        name = f"{method}Body"
        schemas[name] = copy.deepcopy(source)
        for field in path_fields:
            schemas[name]["properties"].pop(field, None)
        in_path = ", ".join(f"`{field}`" for field in path_fields)
        schemas[name]["description"] = f"{source.get('description', '')} Without {in_path}: the path carries it."
        media["schema"] = {"$ref": SCHEMAS + name}
    return body


def _describe_stream(ok: JsonDict) -> None:
    item = ok["content"]["application/json"]["schema"]
    name = item["$ref"].removeprefix(SCHEMAS)
    ok["description"] = STREAM_DESCRIPTION.format(item=name)
    ok["content"] = {
        "application/x-ndjson": {"schema": item},
        "text/event-stream": {
            "schema": {
                "type": "string",
                "description": f"`data: <{name} as JSON>` lines, each followed by a blank line.",
            },
            "example": SSE_EXAMPLE,
        },
    }


# --- schemas ------------------------------------------------------------------------------------


def _always_printed(field: descriptor_pb2.FieldDescriptorProto) -> bool:
    """What Envoy prints with always_print_primitive_fields: scalars, enums and repeated fields, even when zero;
    a singular message field only when set, a proto3 `optional` field only when present."""
    if field.proto3_optional:
        return False
    return field.label == Field.LABEL_REPEATED or field.type != Field.TYPE_MESSAGE


def _closure(schemas: JsonDict, roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [r.removeprefix(SCHEMAS) for r in roots if r.startswith(SCHEMAS)]
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        todo += [r.removeprefix(SCHEMAS) for r in _refs(schemas[name]) if r.startswith(SCHEMAS)]
    return seen


def _collect_garbage(doc: JsonDict) -> None:
    schemas: JsonDict = doc["components"]["schemas"]
    keep = _closure(schemas, _refs(doc["paths"]))
    for name in list(schemas):
        if name not in keep:
            del schemas[name]


def _add_errors(doc: JsonDict, protos: Protos) -> None:
    """google.rpc.Status and the detail types, from their descriptors: the generator only describes messages
    that an RPC takes or returns, and errors are neither."""
    schemas: JsonDict = doc["components"]["schemas"]
    schemas["protobufAny"] = {
        "type": "object",
        "description": "A detail message: `@type` names it, its fields follow. This service sends "
        + ", ".join(f"`google.rpc.{name}` (rpc{name})" for name in ERROR_DETAILS)
        + ".",
        "properties": {"@type": {"type": "string", "description": "`type.googleapis.com/` and the message name."}},
        "required": ["@type"],
        "additionalProperties": {},
    }
    todo = ["google.rpc.Status", *(f"google.rpc.{name}" for name in ERROR_DETAILS)]
    done: set[str] = set()
    while todo:
        full = todo.pop(0)
        if full in done:
            continue
        done.add(full)
        message, comment = protos.messages[full]
        comment = _first_paragraph(comment)
        properties: JsonDict = {}
        if full.removeprefix("google.rpc.") in ERROR_DETAILS:
            properties["@type"] = {"type": "string", "enum": [f"type.googleapis.com/{full}"]}
        for field in message.field:
            properties[field.name] = _field_schema(field, protos, todo)
            # googleapis comments go on about camelCase JSON and other languages: the first paragraph is enough.
            if text := _first_paragraph(protos.field_comments.get((full, field.name), "")):
                properties[field.name]["description"] = text
        schema: JsonDict = {"type": "object", "description": comment, "properties": properties}
        if "@type" in properties:
            schema["required"] = ["@type"]
        if full == "google.rpc.Status":
            # Both the transcoder and Envoy's own (local) replies always write these three.
            schema["required"] = ["code", "message", "details"]
        schemas[protos.schema_name(full)] = schema
    doc["components"]["responses"] = {
        "Error": {
            "description": ERROR_DESCRIPTION,
            "content": {"application/json": {"schema": {"$ref": SCHEMAS + "rpcStatus"}}},
        }
    }


def _field_schema(field: descriptor_pb2.FieldDescriptorProto, protos: Protos, todo: list[str]) -> JsonDict:
    if field.type == Field.TYPE_MESSAGE:
        full = field.type_name.lstrip(".")
        message = protos.messages[full][0]
        if message.options.map_entry:
            value = next(f for f in message.field if f.name == "value")
            return {"type": "object", "additionalProperties": _field_schema(value, protos, todo)}
        if field.type_name in _WELL_KNOWN:
            item = dict(_WELL_KNOWN[field.type_name])
        else:
            todo.append(full)
            item = {"$ref": SCHEMAS + protos.schema_name(full)}
    elif field.type == Field.TYPE_ENUM:
        item = {"type": "string"}
    else:
        item = dict(_SCALARS[field.type])
    if field.label == Field.LABEL_REPEATED:
        return {"type": "array", "items": item}
    if "$ref" in item:
        return {"allOf": [item]}  # so that a description can stand beside it (OpenAPI 3.0 ignores $ref siblings)
    return item


# --- helpers ------------------------------------------------------------------------------------


def _verb_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return str(kind).upper(), str(getattr(rule, str(kind)))


def _refs(node: Any) -> set[str]:
    found: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("$ref"), str):
                found.add(value["$ref"])
            for child in value.values():
                visit(child)
        elif isinstance(value, list):
            for child in value:
                visit(child)

    visit(node)
    return found


def _walk(node: Any, fix: Any) -> None:
    if isinstance(node, dict):
        fix(node)
        for child in node.values():
            _walk(child, fix)
    elif isinstance(node, list):
        for child in node:
            _walk(child, fix)


def _tidy(node: JsonDict) -> None:
    # grpc-gateway v1 writes `format: boolean`, which no OpenAPI format is.
    if node.get("type") == "boolean" and node.get("format") == "boolean":
        del node["format"]
    # swagger2openapi turns a $ref with a description into `allOf: [{$ref}, {description}]`; the description
    # can stand beside the allOf itself, which is how Swagger UI shows it.
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 2 and set(all_of[1]) == {"description"}:
        node["description"] = all_of.pop()["description"]


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _first_paragraph(text: str) -> str:
    return text.split("\n\n", 1)[0]


def _reflow(text: str) -> str:
    """Joins the lines of each paragraph (proto comments wrap at 120 columns); keeps list items apart."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.split("\n")
        if any(line.lstrip().startswith("- ") for line in lines):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def _first_sentence(text: str) -> str:
    match = re.match(r"(.+?\.)(\s|$)", text, re.DOTALL)
    return (match.group(1) if match else text).replace("\n", " ")

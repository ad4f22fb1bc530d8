"""Finishes the OpenAPI 3 document that protoc-gen-swagger (grpc-gateway v1) and swagger2openapi make from the
protos, so that it describes the REST API the way it is really served: Envoy's transcoder, then the REST face.

The generator knows nothing of Envoy's settings, of the REST face or of some protobuf JSON rules, so this step,
driven by the same descriptor set Envoy loads: turns Struct/Value into free JSON, drops path fields from request
bodies (Envoy refuses a body field that collides with one), marks the fields Envoy always prints as required
(`always_print_primitive_fields`), applies the REST face's rules (gateway/restface.py: the guide's names, enum
words, inlined results), adds the guide's error bodies, and describes the server stream as what it is on the
wire: NDJSON, or Server-Sent Events.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from gateway import restface

JsonDict = dict[str, Any]
Field = descriptor_pb2.FieldDescriptorProto

TITLE = "Agent Orchestrator REST API"
API_VERSION = "v1"
ALIAS_PREFIX = "/api/v1/"
ALIAS_TAG_SUFFIX = " (/api/v1 aliases)"
SCHEMAS = "#/components/schemas/"

CONVENTIONS = """\
Served by an Envoy sidecar that transcodes JSON to the gRPC service; the protobuf files are the source of truth.

- The JSON is the API Development Guide's: snake_case field names, status words in lower case (`queued`,
  `running`, `completed`, `failed`, `cancelled`; priorities `low`, `normal`, `high`, `critical`), `status` where
  the protos say `state`, and a completed workflow's results at the top level of its status. 64-bit integers
  are JSON strings; timestamps are RFC 3339 strings.
- Responses print every scalar, enum and list field, zero values included; message fields (timestamps, results)
  are left out while unset.
- A body that does not fit the request model gets 422 with FastAPI's `detail` list; unknown query parameters
  are refused with 400; unknown JSON body fields are ignored.
- Every error body is the guide's `ErrorResponse`: `error` (a stable code), `message`, `details`, `timestamp`,
  `request_id` (the `x-request-id`), plus `detail` with the message. A 429 carries `Retry-After`.
- `GET /workflow-events/{session_id}` streams: one JSON event per line, or Server-Sent Events when the request
  accepts `text/event-stream`. `GET /ws/{session_id}` is the guide's WebSocket: it answers `ping` with `pong`
  and pushes the same events as JSON text messages."""

ERROR_DESCRIPTION = """\
The guide's `ErrorResponse`. The HTTP status follows the gRPC code: INVALID_ARGUMENT, FAILED_PRECONDITION and \
OUT_OF_RANGE 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS and ABORTED 409, \
RESOURCE_EXHAUSTED 429, CANCELLED 499, INTERNAL, UNKNOWN and DATA_LOSS 500, UNIMPLEMENTED 501, UNAVAILABLE 503, \
DEADLINE_EXCEEDED 504."""

STREAM_DESCRIPTION = """\
A stream of `{item}` messages, sent as they happen; the HTTP status is decided before the first one.

- `application/x-ndjson` (the default): one JSON object per line. Envoy labels it `Content-Type: \
application/json` all the same: read it line by line, not as one document.
- `text/event-stream` (when the request's `Accept` includes it): Server-Sent Events, each message an \
`id:` line (its sequence) and a `data:` line followed by a blank line. A reconnecting `EventSource` sends \
`Last-Event-ID` and resumes after it.

An error after the first message cannot change the status: the stream just ends. Read to the terminal event; \
to resume after a dropped connection, ask again with `after_sequence` set to the last sequence received."""

SSE_EXAMPLE = 'id: 1\ndata: {"session_id":"6f1c...","sequence":"1","type":"workflow_queued",...}\n\n'

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
        if method.name == restface.UNHEALTHY["rpc"]:
            op["responses"][str(restface.UNHEALTHY["status"])] = {
                "description": "The service cannot serve now (`status` is `not_serving`): the same report.",
                "content": copy.deepcopy(ok["content"]),
            }
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

    _apply_rest_face(doc, protos, restface.rules_from_set(files))
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
    """The guide's error bodies: ErrorResponse for every error, and FastAPI's validation list for 422."""
    del protos  # the error bodies are the REST face's, not a proto message
    schemas: JsonDict = doc["components"]["schemas"]
    common: JsonDict = {
        "error": {"type": "string", "description": "A stable machine-readable code, e.g. `UNKNOWN_WORKFLOW_TYPE`."},
        "message": {"type": "string", "description": "What went wrong, for people."},
        "details": {
            "type": "object",
            "additionalProperties": {},
            "description": "More about it: `field_violations` (`field`, `description`) for invalid input, "
            "`retry_after_seconds` when a retry later may succeed, and the error's metadata.",
        },
        "timestamp": {"type": "string", "format": "date-time", "description": "When the error happened."},
        "request_id": {"type": "string", "nullable": True, "description": "The `x-request-id` of the request."},
    }
    schemas["ErrorResponse"] = {
        "type": "object",
        "description": "The API Development Guide's error body, plus FastAPI's `detail` with the same text.",
        "properties": {**common, "detail": {"type": "string", "description": "The message again, as FastAPI's "
                                            "HTTPException gives it."}},
        "required": ["error", "message", "detail", "details", "timestamp", "request_id"],
    }
    schemas["ValidationError"] = {
        "type": "object",
        "description": "One problem with the request body, as FastAPI (pydantic) reports it.",
        "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
            "input": {},
            "ctx": {"type": "object", "additionalProperties": {}},
        },
        "required": ["loc", "msg", "type"],
    }
    schemas["ValidationErrorResponse"] = {
        "type": "object",
        "description": "A body that does not fit the request model: the guide's error fields, with `detail` as "
        "FastAPI's list of problems.",
        "properties": {**common, "detail": {"type": "array", "items": {"$ref": SCHEMAS + "ValidationError"}}},
        "required": ["error", "message", "detail", "details", "timestamp", "request_id"],
    }
    doc["components"]["responses"] = {
        "Error": {
            "description": ERROR_DESCRIPTION,
            "headers": {
                "Retry-After": {
                    "description": "On 429 (and 503 when a retry may succeed): seconds to wait.",
                    "schema": {"type": "integer"},
                }
            },
            "content": {"application/json": {"schema": {"$ref": SCHEMAS + "ErrorResponse"}}},
        },
        "ValidationFailed": {
            "description": "The body does not fit the request model (missing or mistyped field, malformed JSON).",
            "content": {"application/json": {"schema": {"$ref": SCHEMAS + "ValidationErrorResponse"}}},
        },
    }
    for _, _, op in _operations(doc):
        if "requestBody" in op:
            op["responses"]["422"] = {"$ref": "#/components/responses/ValidationFailed"}


# --- the REST face --------------------------------------------------------------------------------


def _apply_rest_face(doc: JsonDict, protos: Protos, rules: restface.RestRules) -> None:
    """What the REST face does to the JSON (gateway/restface.py), done to the schemas that describe it."""
    schemas: JsonDict = doc["components"]["schemas"]
    for full, prefix in rules.enum_prefixes.items():
        name = "v1" + full.rsplit(".", 1)[-1]
        if name in schemas:
            _enum_to_words(schemas[name], prefix)
    for path, verb, op in _operations(doc):
        method = protos.bindings[(verb.upper(), path)]
        fields = rules.requests.get(method.input_type.lstrip("."), {})
        for parameter in op.get("parameters", []):
            rule = fields.get(parameter["name"])
            if parameter["in"] != "query" or rule is None:
                continue
            parameter["name"] = rule.get("name", parameter["name"])
            if rule["kind"] == "enum":
                _enum_to_words(parameter["schema"], rule["prefix"])
                parameter["description"] = _words_in_text(parameter.get("description", ""), rule["prefix"])
    for full, fields in rules.responses.items():
        name = protos.schema_name(full)
        if name in schemas:
            _reshape(schemas, schemas[name], fields, protos)
    if "v1ExecuteWorkflowResponse" in schemas:
        status = schemas["v1ExecuteWorkflowResponse"]["properties"]["status"]
        status["description"] = (
            "Output only. `accepted`: the workflow was accepted (the guide's tests check this word); "
            "its status then says `queued`."
        )


def _enum_to_words(schema: JsonDict, prefix: str) -> None:
    schema["enum"] = [
        value.removeprefix(prefix).lower() for value in schema.get("enum", []) if not value.endswith("_UNSPECIFIED")
    ]
    schema.pop("default", None)
    if "description" in schema:
        schema["description"] = _words_in_text(schema["description"], prefix)


def _words_in_text(text: str, prefix: str) -> str:
    """The generator lists enum values in descriptions as ` - NAME: comment`; the REST face says the word."""
    lines = [line for line in text.split("\n") if not re.match(rf"\s*- {prefix}UNSPECIFIED:", line)]
    return re.sub(rf"\b{prefix}([A-Z0-9_]+)", lambda m: f"`{m.group(1).lower()}`", "\n".join(lines))


def _reshape(schemas: JsonDict, schema: JsonDict, fields: dict[str, JsonDict], protos: Protos) -> None:
    properties: JsonDict = {}
    required: list[str] = []
    was_required = set(schema.get("required", []))
    inlined: list[JsonDict] = []
    for key, prop in schema.get("properties", {}).items():
        rule = fields.get(key, {})
        if rule.get("hidden"):
            continue
        if rule.get("inline"):
            ref = next(iter(_refs(prop)), "")
            inlined.append(schemas[ref.removeprefix(SCHEMAS)])
            continue
        if "constant" in rule:
            prop = {"type": "string", "enum": [rule["constant"]], "description": prop.get("description", "")}
        new_key = rule.get("name", key)
        properties[new_key] = prop
        if key in was_required:
            required.append(new_key)
    for inner in inlined:
        for key, prop in inner.get("properties", {}).items():
            properties.setdefault(key, prop)
    schema["properties"] = properties
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    del protos


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

"""The REST face of the one proto contract: the API Development Guide's JSON, derived from the descriptor set.

The protos say how each field looks on REST (`orchestrator.v1.rest` options, `google.api.field_behavior`,
`google.api.http`); `load_rules` reads that into plain tables. Envoy applies them in a Lua filter
(`lua_source`, gateway/restface.lua) to transcoded calls; the service's live endpoint (WebSocket, SSE) applies
the same tables with `to_rest`; scripts/openapi.py describes them. One set of rules, three readers.

Enum values on REST are the value name without the enum's prefix, in lower case: `WORKFLOW_STATE_QUEUED` is
`queued`, `PRIORITY_HIGH` is `high`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory

JsonDict = dict[str, Any]

SERVICE: Final = "orchestrator.v1.OrchestratorService"
DEFAULT_DESCRIPTOR: Final = Path(__file__).resolve().with_name("orchestrator.pb")

LUA_FILE: Final = Path(__file__).resolve().with_name("restface.lua")
REST_OPTION: Final = "orchestrator.v1.rest"
FIELD_BEHAVIOR: Final = "google.api.field_behavior"
HTTP_RULE: Final = "google.api.http"
_REQUIRED: Final = 2  # google.api.FieldBehavior.REQUIRED
# How long a client may reuse GET /workflow-types: the catalog changes only when the service restarts, and the
# ETag catches that. The guide's cache keeps it 300 s.
TYPES_MAX_AGE_SECONDS: Final = 300

# GET /health answers 503 while the service reports NOT_SERVING, with the HealthResponse still in the body:
# Kubernetes' HTTP probes and load balancers read the status code, people read the report. Over gRPC the Health
# RPC returns OK (the report is its answer, and grpc.health.v1 is the gRPC probe), so this rule is the REST face's
# own: when the proto JSON of `rpc`'s response has `value` in `field`, the HTTP status is `status`.
UNHEALTHY: Final[dict[str, Any]] = {
    "rpc": "Health",
    "field": "status",
    "value": "SERVING_STATUS_NOT_SERVING",
    "status": 503,
}

# The Lua filter's dynamic metadata namespace; `own_reply` is set on a request it answered itself, so that
# local_reply_config leaves that answer alone.
METADATA_NAMESPACE: Final = "orchestrator.restface"

# Stable machine codes for Envoy's own replies, by HTTP status (the `error` of the guide's ErrorResponse).
HTTP_ERRORS: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "ABORTED",
    413: "PAYLOAD_TOO_LARGE",
    421: "MISDIRECTED_REQUEST",
    422: "VALIDATION_ERROR",
    426: "UPGRADE_REQUIRED",
    429: "RATE_LIMITED",
    431: "HEADERS_TOO_LARGE",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "BAD_GATEWAY",
    503: "UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}

_JSON_KINDS: Final[dict[int, str]] = {
    descriptor.FieldDescriptor.TYPE_STRING: "string",
    descriptor.FieldDescriptor.TYPE_BYTES: "string",
    descriptor.FieldDescriptor.TYPE_BOOL: "boolean",
    descriptor.FieldDescriptor.TYPE_DOUBLE: "number",
    descriptor.FieldDescriptor.TYPE_FLOAT: "number",
    **dict.fromkeys(
        (
            descriptor.FieldDescriptor.TYPE_INT32,
            descriptor.FieldDescriptor.TYPE_INT64,
            descriptor.FieldDescriptor.TYPE_UINT32,
            descriptor.FieldDescriptor.TYPE_UINT64,
            descriptor.FieldDescriptor.TYPE_SINT32,
            descriptor.FieldDescriptor.TYPE_SINT64,
            descriptor.FieldDescriptor.TYPE_FIXED32,
            descriptor.FieldDescriptor.TYPE_FIXED64,
            descriptor.FieldDescriptor.TYPE_SFIXED32,
            descriptor.FieldDescriptor.TYPE_SFIXED64,
        ),
        "integer",
    ),
}
_WELL_KNOWN_KINDS: Final[dict[str, str]] = {
    "google.protobuf.Struct": "object",
    "google.protobuf.Value": "any",
    "google.protobuf.ListValue": "array",
    "google.protobuf.Timestamp": "string",
    "google.protobuf.Duration": "string",
}


@dataclass(frozen=True)
class Route:
    """One REST binding of an RPC: `pattern` is a Lua pattern (also a valid Python regex) for the path."""

    method: str
    pattern: str
    rpc: str
    request: str
    response: str
    body: bool
    server_streaming: bool


@dataclass(frozen=True)
class RestRules:
    """What the REST face does to each message, as plain data the Lua filter and Python both read.

    `responses[message][proto_field]` holds, for fields that change on REST: `name` (REST key), `enum` (the
    prefix to strip), `message` (a nested message that itself changes), `inline`, `constant`, `hidden`.
    `requests[message][proto_field]` holds each field of a request message: `kind` (its JSON kind), `required`,
    `repeated`, `name`, and for enums `words` (REST word -> proto name) and `pattern`.
    """

    responses: dict[str, dict[str, JsonDict]]
    requests: dict[str, dict[str, JsonDict]]
    routes: list[Route]
    # Every enum of the API, by full name: the prefix its values share (stripped on REST).
    enum_prefixes: dict[str, str] = field(default_factory=dict)

    @property
    def response_of(self) -> dict[str, str]:
        return {route.rpc: route.response for route in self.routes}


def enum_prefix(enum: descriptor.EnumDescriptor) -> str:
    """`WorkflowState` -> `WORKFLOW_STATE_` (buf's ENUM_VALUE_PREFIX rule makes every value start with it)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_words(enum: descriptor.EnumDescriptor) -> dict[str, str]:
    """REST word -> proto value name, without the UNSPECIFIED value (never a valid input)."""
    prefix = enum_prefix(enum)
    return {
        value.name.removeprefix(prefix).lower(): value.name
        for value in enum.values
        if value.number != 0 and value.name.startswith(prefix)
    }


@functools.cache
def load_rules(descriptor_path: Path = DEFAULT_DESCRIPTOR) -> RestRules:
    """Reads the REST face out of the descriptor set at `descriptor_path`."""
    return rules_from_set(descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_path).read_bytes()))


def rules_from_set(files: descriptor_pb2.FileDescriptorSet) -> RestRules:
    """Reads the REST face out of a descriptor set."""
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    try:
        service = pool.FindServiceByName(SERVICE)
        reader = _OptionReader(pool)
    except KeyError as missing:
        raise ValueError(f"the descriptor set does not describe {SERVICE} and its REST options: {missing}") from None
    routes: list[Route] = []
    requests: dict[str, dict[str, JsonDict]] = {}
    responses: dict[str, dict[str, JsonDict]] = {}
    for method in service.methods:
        for verb, path, body in reader.http_bindings(method):
            routes.append(
                Route(
                    method=verb,
                    pattern=_path_pattern(path),
                    rpc=method.name,
                    request=method.input_type.full_name,
                    response=method.output_type.full_name,
                    body=bool(body),
                    server_streaming=method.server_streaming,
                )
            )
        requests[method.input_type.full_name] = _request_rules(method.input_type, reader)
        _response_rules(method.output_type, reader, responses)
    prefixes = {}
    for file in files.file:
        if file.package == service.file.package:
            for enum_proto in file.enum_type:
                enum = pool.FindEnumTypeByName(f"{file.package}.{enum_proto.name}")
                prefixes[enum.full_name] = enum_prefix(enum)
    return RestRules(responses=responses, requests=requests, routes=routes, enum_prefixes=prefixes)


class _OptionReader:
    """Options with their extensions: the pool's own FieldOptions class parses what the default one cannot."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool
        self._field_options = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.FieldOptions")
        )
        self._method_options = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.MethodOptions")
        )
        # Any: the stubs type extension handles for generated code, not for ones found in a pool.
        self._rest: Any = pool.FindExtensionByName(REST_OPTION)
        self._behavior: Any = pool.FindExtensionByName(FIELD_BEHAVIOR)
        self._http: Any = pool.FindExtensionByName(HTTP_RULE)

    def rest(self, fd: descriptor.FieldDescriptor) -> Any | None:
        options = self._field_options.FromString(fd.GetOptions().SerializeToString())
        return options.Extensions[self._rest] if options.HasExtension(self._rest) else None

    def required(self, fd: descriptor.FieldDescriptor) -> bool:
        options = self._field_options.FromString(fd.GetOptions().SerializeToString())
        return _REQUIRED in options.Extensions[self._behavior]

    def http_bindings(self, method: descriptor.MethodDescriptor) -> list[tuple[str, str, str]]:
        options = self._method_options.FromString(method.GetOptions().SerializeToString())
        if not options.HasExtension(self._http):
            return []
        rule: Any = options.Extensions[self._http]
        bindings = []
        for one in [rule, *rule.additional_bindings]:
            verb = one.WhichOneof("pattern")
            if verb is not None and verb != "custom":
                bindings.append((verb.upper(), getattr(one, verb), one.body))
        return bindings


def _path_pattern(template: str) -> str:
    """`/workflow-status/{session_id}` -> `^/workflow%-status/[^/]+$` (Lua's escape for `-` is `%-`)."""
    out = []
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            out.append("[^/]+")
        else:
            out.append(re.sub(r"([^\w/])", r"%\1", part))
    return "^" + "".join(out) + "$"


def _message_of(fd: descriptor.FieldDescriptor) -> descriptor.Descriptor:
    assert fd.message_type is not None, fd.full_name
    return fd.message_type


def _enum_of(fd: descriptor.FieldDescriptor) -> descriptor.EnumDescriptor:
    assert fd.enum_type is not None, fd.full_name
    return fd.enum_type


def _json_kind(fd: descriptor.FieldDescriptor) -> str:
    if fd.type == descriptor.FieldDescriptor.TYPE_ENUM:
        return "enum"
    if fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        return _WELL_KNOWN_KINDS.get(_message_of(fd).full_name, "object")
    return _JSON_KINDS[fd.type]


def _request_rules(message: descriptor.Descriptor, reader: _OptionReader) -> dict[str, JsonDict]:
    rules: dict[str, JsonDict] = {}
    for fd in message.fields:
        rule: JsonDict = {"kind": _json_kind(fd)}
        if reader.required(fd):
            rule["required"] = True
        if fd.is_repeated:
            rule["repeated"] = True
        rest = reader.rest(fd)
        if rest is not None and rest.name:
            rule["name"] = rest.name
        if fd.type == descriptor.FieldDescriptor.TYPE_ENUM:
            words = enum_words(_enum_of(fd))
            rule["words"] = words
            rule["prefix"] = enum_prefix(_enum_of(fd))
            rule["pattern"] = "^(" + "|".join(words) + ")$"
        rules[fd.name] = rule
    return rules


def _response_rules(
    message: descriptor.Descriptor, reader: _OptionReader, out: dict[str, dict[str, JsonDict]]
) -> bool:
    """Adds the rules of `message` (and of the messages inside it) to `out`; True when REST changes it."""
    if message.full_name in out:
        return bool(out[message.full_name])
    out[message.full_name] = {}  # a placeholder, so recursive messages end
    rules: dict[str, JsonDict] = {}
    for fd in message.fields:
        rule: JsonDict = {}
        rest = reader.rest(fd)
        if rest is not None:
            if rest.hidden:
                rule["hidden"] = True
            if rest.name:
                rule["name"] = rest.name
            if rest.inline:
                rule["inline"] = True
            if rest.constant:
                rule["constant"] = rest.constant
        if fd.type == descriptor.FieldDescriptor.TYPE_ENUM:
            rule["enum"] = enum_prefix(_enum_of(fd))
        elif (
            fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE
            and _message_of(fd).full_name not in _WELL_KNOWN_KINDS
            and _response_rules(_message_of(fd), reader, out)
        ):
            rule["message"] = _message_of(fd).full_name
        if rule:
            rules[fd.name] = rule
    _check_keys(message, rules)
    if rules:
        out[message.full_name] = rules
    else:
        del out[message.full_name]
    return bool(rules)


def _check_keys(message: descriptor.Descriptor, rules: dict[str, JsonDict]) -> None:
    """Two fields must never land on the same REST key: one of them would be lost. (An inlined message's keys
    give way to the parent's by design, so they are not checked.)"""
    keys: dict[str, str] = {}
    for fd in message.fields:
        rule = rules.get(fd.name, {})
        if rule.get("hidden") or rule.get("inline"):
            continue
        name = rule.get("name", fd.name)
        if name in keys:
            raise ValueError(f"{message.full_name}: fields {keys[name]!r} and {fd.name!r} both appear as {name!r}")
        keys[name] = fd.name


# --- the transform in Python (the service's live endpoint; tests compare it with the Lua filter) -----------


def to_rest(message: str, obj: Any, rules: RestRules | None = None) -> Any:
    """The REST face of `obj`, the proto3 JSON of `message` (with proto field names and default values)."""
    rules = rules or load_rules()
    table = rules.responses.get(message)
    if table is None or not isinstance(obj, dict):
        return obj
    out: JsonDict = {}
    inlined: list[Any] = []
    for key, value in obj.items():
        rule = table.get(key)
        if rule is None:
            out.setdefault(key, value)
            continue
        if rule.get("hidden"):
            continue
        if "constant" in rule:
            value = rule["constant"]
        elif "enum" in rule:
            value = [_word(rule["enum"], v) for v in value] if isinstance(value, list) else _word(rule["enum"], value)
        elif "message" in rule:
            inner = rule["message"]
            if isinstance(value, list):
                value = [to_rest(inner, v, rules) for v in value]
            else:
                value = to_rest(inner, value, rules)
        if rule.get("inline"):
            inlined.append(value)
        else:
            out[str(rule.get("name", key))] = value
    for inner_obj in inlined:
        if isinstance(inner_obj, dict):
            for key, value in inner_obj.items():
                out.setdefault(key, value)
    return out


def _word(prefix: str, value: Any) -> Any:
    if isinstance(value, str) and value.startswith(prefix):
        return value.removeprefix(prefix).lower()
    return value


def error_body(
    status: int,
    message: str,
    *,
    error: str | None = None,
    details: JsonDict | None = None,
    request_id: str | None = None,
    now: datetime | None = None,
) -> JsonDict:
    """The guide's ErrorResponse (error, message, details, timestamp, request_id) plus FastAPI's `detail`."""
    moment = now or datetime.now(UTC)
    return {
        "error": error or HTTP_ERRORS.get(status, "ERROR"),
        "message": message,
        "detail": message,
        "details": details or {},
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        "request_id": request_id,
    }


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, never 0 (0 invites an immediate retry storm)."""
    return str(max(1, math.ceil(seconds)))


# --- the Lua filter ------------------------------------------------------------------------------------------


def lua_source(descriptor_path: Path = DEFAULT_DESCRIPTOR) -> str:
    """The Lua filter's code: the rules as a Lua table, then gateway/restface.lua."""
    rules = load_rules(descriptor_path)
    table = {
        "responses": rules.responses,
        "requests": {
            name: fields for name, fields in rules.requests.items() if name in {r.request for r in rules.routes}
        },
        "routes": [
            {
                "method": r.method,
                "pattern": r.pattern,
                "rpc": r.rpc,
                "request": r.request,
                "body": r.body,
            }
            for r in rules.routes
            if not r.server_streaming  # streams are served by the live endpoint, never buffered here
        ],
        "response_of": rules.response_of,
        "http_errors": {str(k): v for k, v in HTTP_ERRORS.items()},
        "types_max_age": str(TYPES_MAX_AGE_SECONDS),
        "unhealthy": {**UNHEALTHY, "status": str(UNHEALTHY["status"])},
        "metadata_namespace": METADATA_NAMESPACE,
    }
    return f"local RULES = {_lua(table)}\n\n{LUA_FILE.read_text()}"


_LUA_PLAIN: Final = frozenset(" _-./^$[]()|%+*?:{}#=,;@")


def _lua_byte(b: int) -> str:
    c = chr(b)
    return c if c.isascii() and (c.isalnum() or c in _LUA_PLAIN) else f"\\{b:03d}"


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Lua strings are bytes: each byte that is not plain ASCII is written as a three-digit decimal escape.
        return '"' + "".join(_lua_byte(b) for b in value.encode()) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua(str(k))}] = {_lua(v)}" for k, v in sorted(value.items())) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as Lua")

"""Reading docs/openapi.json in tests: where an operation's schemas are, and a strict check of a JSON value
against a schema (an undocumented field is a problem too, unless the schema allows any)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "docs" / "openapi.json"
JsonDict = dict[str, Any]


def load() -> JsonDict:
    return dict(json.loads(OPENAPI.read_text()))


def resolve(doc: JsonDict, schema: JsonDict) -> JsonDict:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def response_schema(
    doc: JsonDict, verb: str, path: str, status: str = "200", media: str = "application/json"
) -> JsonDict:
    response = resolve(doc, doc["paths"][path][verb.lower()]["responses"][status])
    return dict(response["content"][media]["schema"])


def problems(doc: JsonDict, schema: JsonDict, value: Any, where: str = "$") -> list[str]:
    schema = resolve(doc, schema)
    if value is None and schema.get("nullable"):
        return []
    found = [p for part in schema.get("allOf", []) for p in problems(doc, part, value, where)]
    if "anyOf" in schema and all(problems(doc, part, value, where) for part in schema["anyOf"]):
        found.append(f"{where}: {value!r} fits none of {schema['anyOf']}")
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if kind == "object":
        if not isinstance(value, dict):
            return [*found, f"{where}: expected an object, got {value!r}"]
        properties = schema.get("properties", {})
        found += [f"{where}: missing required {name!r}" for name in schema.get("required", []) if name not in value]
        for key, item in value.items():
            if key in properties:
                found += problems(doc, properties[key], item, f"{where}.{key}")
            elif "additionalProperties" in schema:
                found += problems(doc, schema["additionalProperties"], item, f"{where}.{key}")
            else:
                found.append(f"{where}: undocumented field {key!r}")
    elif kind == "array":
        if not isinstance(value, list):
            return [*found, f"{where}: expected an array, got {value!r}"]
        for index, item in enumerate(value):
            found += problems(doc, schema.get("items", {}), item, f"{where}[{index}]")
    elif kind == "string":
        if not isinstance(value, str):
            found.append(f"{where}: expected a string, got {value!r}")
        elif schema.get("format") in ("int64", "uint64") and not re.fullmatch(r"-?\d+", value):
            found.append(f"{where}: expected a 64-bit integer as a string, got {value!r}")
        elif schema.get("format") == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        found.append(f"{where}: expected an integer, got {value!r}")
    elif kind == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
        found.append(f"{where}: expected a number, got {value!r}")
    elif kind == "boolean" and not isinstance(value, bool):
        found.append(f"{where}: expected a boolean, got {value!r}")
    return found


def error_problems(doc: JsonDict, body: Any) -> list[str]:
    """The guide's ErrorResponse, or (a 422) the same with FastAPI's list of problems as `detail`."""
    listed = isinstance(body, dict) and isinstance(body.get("detail"), list)
    name = "ValidationErrorResponse" if listed else "ErrorResponse"
    return problems(doc, {"$ref": f"#/components/schemas/{name}"}, body)

"""Workflow types as data: YAML files validated into typed definitions the engine runs without new code."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.agents.settings import parse_model_id
from orchestrator.errors import DefinitionError, FieldViolation, InvalidArgument, UnknownWorkflowType

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "workflow_types"
ROLES = frozenset({"analyst", "architect", "engineer", "tester", "reviewer", "documenter"})
JsonType = Literal["string", "integer", "number", "boolean", "array", "object"]

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}

# Keys every workflow type accepts, because the engine itself honours them.
COMMON_KEYS: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "description": "Model for every role, e.g. `openai:gpt-4o-mini`; default: server's."},
    "models": {"type": "object", "description": 'Model per role, e.g. `{"engineer": "openai:gpt-4o"}`.'},
    "skip_phases": {"type": "array", "description": "Names of phases to skip."},
    "budget_tokens": {"type": "integer", "minimum": 1, "description": "Stop the workflow past this many tokens."},
    "budget_usd": {"type": "number", "minimum": 0, "description": "Stop the workflow past this cost in USD."},
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigKey(_Frozen):
    name: str
    type: JsonType
    description: str = ""
    default: Any = None
    required: bool = False
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: Any) -> str | None:
        """Returns what is wrong with `value`, or None."""
        # bool is an int in Python; a JSON true is not an integer.
        if not isinstance(value, _PY_TYPES[self.type]) or (self.type != "boolean" and isinstance(value, bool)):
            return f"must be of type {self.type}"
        if self.enum is not None and value not in self.enum:
            return f"must be one of {', '.join(map(str, self.enum))}"
        if self.minimum is not None and isinstance(value, int | float) and value < self.minimum:
            return f"must be at least {self.minimum:g}"
        if self.maximum is not None and isinstance(value, int | float) and value > self.maximum:
            return f"must be at most {self.maximum:g}"
        return None


class PhaseDefinition(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    role: str
    depends_on: list[str] = Field(default_factory=list)
    max_attempts: int = Field(3, ge=1, le=10)
    timeout_seconds: float = Field(600.0, gt=0, le=24 * 3600)
    description: str = ""


class WorkflowDefinition(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    description: str
    phases: list[PhaseDefinition] = Field(min_length=1)
    configuration: list[ConfigKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> WorkflowDefinition:
        seen: set[str] = set()
        for phase in self.phases:
            if phase.name in seen:
                raise ValueError(f"phase {phase.name!r} appears twice")
            if phase.role not in ROLES:
                raise ValueError(f"phase {phase.name!r}: unknown role {phase.role!r} (roles: {sorted(ROLES)})")
            for dep in phase.depends_on:
                if dep not in seen:
                    raise ValueError(f"phase {phase.name!r} depends on {dep!r}, which is not an earlier phase")
            seen.add(phase.name)
        names = [key.name for key in self.configuration]
        if len(names) != len(set(names)):
            raise ValueError("a configuration key appears twice")
        return self

    @property
    def phase_names(self) -> list[str]:
        return [phase.name for phase in self.phases]

    def keys(self) -> dict[str, ConfigKey]:
        keys = {name: ConfigKey(name=name, **spec) for name, spec in COMMON_KEYS.items()}
        keys.update({key.name: key for key in self.configuration})
        return keys

    def validate_configuration(self, configuration: dict[str, Any]) -> CheckedConfiguration:
        """Checks every key the type documents and returns the configuration with defaults filled in. Keys it
        does not document are kept and passed on (the agents show them to the model), with a warning each: the
        API's contract takes any keys, and a typo should be visible to the caller without failing the call."""
        keys = self.keys()
        violations: list[FieldViolation] = []
        warnings: list[str] = []
        for name, value in configuration.items():
            key = keys.get(name)
            if key is None:
                warnings.append(
                    f"configuration key {name!r} is not documented by {self.name!r}; it is passed on unchecked "
                    f"(documented: {', '.join(keys)})"
                )
            elif (problem := key.check(value)) is not None:
                violations.append(FieldViolation(f"configuration.{name}", problem))
        for key in keys.values():
            if key.required and key.name not in configuration:
                violations.append(FieldViolation(f"configuration.{key.name}", "is required by this workflow type"))
        violations += _model_violations(configuration)
        skip = configuration.get("skip_phases", [])
        if isinstance(skip, list):
            for name in skip:
                if name not in self.phase_names:
                    violations.append(
                        FieldViolation("configuration.skip_phases", f"{name!r} is not a phase of {self.name!r}")
                    )
        if violations:
            raise InvalidArgument("invalid configuration: " + "; ".join(v.field for v in violations), violations)
        filled = {k.name: k.default for k in keys.values() if k.default is not None}
        filled.update(configuration)
        return CheckedConfiguration(values=filled, warnings=sorted(warnings))  # a Struct's keys come unordered


class CheckedConfiguration(NamedTuple):
    """A configuration that passed validate_configuration, and what deserves the caller's look."""

    values: dict[str, Any]
    warnings: list[str]


def _model_violations(configuration: dict[str, Any]) -> list[FieldViolation]:
    """Model ids must name a provider this server knows; a typo should fail at submit, not in phase three."""
    found = []
    candidates = [("configuration.model", configuration.get("model"))]
    models = configuration.get("models")
    if isinstance(models, dict):
        for role, value in models.items():
            if role not in ROLES:
                roles = ", ".join(sorted(ROLES))
                found.append(FieldViolation(f"configuration.models.{role}", f"unknown role; roles: {roles}"))
            candidates.append((f"configuration.models.{role}", value))
    for field, value in candidates:
        if value is None:
            continue
        if not isinstance(value, str):
            found.append(FieldViolation(field, "must be a model id such as 'offline' or 'openai:gpt-4o-mini'"))
            continue
        try:
            parse_model_id(value)
        except ValueError as exc:
            found.append(FieldViolation(field, str(exc)))
    return found


class Catalog:
    """The workflow types this server runs, by name."""

    def __init__(self, definitions: list[WorkflowDefinition]) -> None:
        self._by_name = {d.name: d for d in sorted(definitions, key=lambda d: d.name)}

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> WorkflowDefinition:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownWorkflowType(name, self.names()) from None


def load_file(path: Path) -> WorkflowDefinition:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise DefinitionError(f"{path}: expected a mapping at the top level")
        keys = raw.get("configuration") or {}
        if isinstance(keys, dict):
            raw["configuration"] = [{"name": k, **(v or {})} for k, v in keys.items()]
        return WorkflowDefinition.model_validate(raw)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DefinitionError(f"{path}: invalid workflow type: {problems}") from None


def load_catalog(extra_dir: Path | None = None) -> Catalog:
    """Built-in types, then the operator's directory; an operator file may replace a built-in type by name."""
    definitions: dict[str, WorkflowDefinition] = {}
    dirs = [BUILTIN_DIR] + ([extra_dir] if extra_dir else [])
    for directory in dirs:
        if not directory.is_dir():
            raise DefinitionError(f"workflow types directory {directory} does not exist")
        for path in sorted(directory.glob("*.y*ml")):
            definition = load_file(path)
            if definition.name in definitions and directory == BUILTIN_DIR:
                raise DefinitionError(f"{path}: workflow type {definition.name!r} defined twice")
            definitions[definition.name] = definition
            logger.debug("loaded workflow type %s from %s", definition.name, path)
    if not definitions:
        raise DefinitionError("no workflow types found")
    return Catalog(list(definitions.values()))


def configuration_size_problems(configuration: dict[str, Any], max_bytes: int, max_depth: int) -> str | None:
    size = len(json.dumps(configuration, separators=(",", ":")))
    if size > max_bytes:
        return f"is {size} bytes of JSON; the limit is {max_bytes}"
    if _depth(configuration) > max_depth:
        return f"nests deeper than {max_depth} levels"
    return None


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0

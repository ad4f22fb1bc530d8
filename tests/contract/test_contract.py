"""The contract itself: documented REST paths exist, enum tables cover every value, the layers stay apart,
and the generated files match the protos."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from orchestrator import models as m
from service import convert
from service.gen.orchestrator.v1 import enums_pb2 as enums

ROOT = Path(__file__).resolve().parents[2]

# The REST contract users were promised. `buf breaking` does not look at google.api.http options, so removing
# or renaming one of these must fail here.
DOCUMENTED = {
    ("POST", "/execute-workflow"),
    ("GET", "/workflow-status/{session_id}"),
    ("GET", "/workflow-types"),
    ("GET", "/health"),
    ("GET", "/workflow-events/{session_id}"),
    ("POST", "/cancel-workflow/{session_id}"),
    ("GET", "/workflows"),
}


def _bindings() -> dict[str, set[tuple[str, str]]]:
    data = (ROOT / "gateway" / "orchestrator.pb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    found: dict[str, set[tuple[str, str]]] = {}
    for file in files.file:
        for service in file.service:
            if service.name != "OrchestratorService":
                continue
            for method in service.method:
                rule = http_pb2.HttpRule()
                rule.ParseFromString(method.options.Extensions[annotations_pb2.http].SerializeToString())
                for r in [rule, *rule.additional_bindings]:
                    kind = r.WhichOneof("pattern")
                    found.setdefault(method.name, set()).add((kind.upper(), getattr(r, kind)))
    return found


def test_every_documented_path_exists_and_is_versioned_too() -> None:
    bindings = _bindings()
    paths = set().union(*bindings.values())
    assert paths >= DOCUMENTED
    assert {(verb, "/api/v1" + path) for verb, path in DOCUMENTED} <= paths
    assert set(bindings) == {
        "ExecuteWorkflow", "GetWorkflowStatus", "WatchWorkflow", "CancelWorkflow",
        "ListWorkflows", "ListWorkflowTypes", "Health",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("table", "domain", "proto_enum"),
    [
        (convert.STATE_TO_PB, m.WorkflowState, enums.WorkflowState),
        (convert.PRIORITY_TO_PB, m.Priority, enums.Priority),
        (convert.PHASE_STATE_TO_PB, m.PhaseState, enums.PhaseState),
        (convert.EVENT_TYPE_TO_PB, m.EventType, enums.EventType),
        (convert.SERVING_TO_PB, m.ServingStatus, enums.ServingStatus),
    ],
)
def test_enum_tables_cover_every_value_both_ways(table: dict, domain: type, proto_enum: object) -> None:  # type: ignore[type-arg]
    assert set(table) == set(domain)  # type: ignore[call-overload]
    proto_values = {v for name, v in proto_enum.items() if not name.endswith("_UNSPECIFIED")}  # type: ignore[attr-defined]
    assert set(table.values()) == proto_values
    for value, number in table.items():
        assert value.name in proto_enum.Name(number)  # type: ignore[attr-defined]


def test_priority_unspecified_means_normal() -> None:
    assert convert.PRIORITY_FROM_PB[enums.PRIORITY_UNSPECIFIED] is m.Priority.NORMAL


_TRANSPORT_IMPORT = re.compile(r"^\s*(?:from|import)\s+(grpc|service|gateway|google\.protobuf)\b", re.MULTILINE)


def test_the_domain_never_imports_the_transport() -> None:
    # A regex, not ast.parse: CPython 3.11's parser can fail with "AST constructor recursion depth mismatch"
    # late in a long test session, and an import statement is a line anyway.
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for path in (ROOT / "orchestrator").rglob("*.py")
        for match in _TRANSPORT_IMPORT.finditer(path.read_text())
    ]
    assert offenders == []


def test_generated_files_match_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

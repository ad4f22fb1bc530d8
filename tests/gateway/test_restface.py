"""The REST face's rules, read from the descriptor set, and the Python half of the transform (the Lua half is
exercised through a real Envoy in test_gateway_rest.py and tests/service/test_rest_through_envoy.py)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pool

from gateway import restface
from service.gen.orchestrator.v1 import enums_pb2

RULES = restface.load_rules()


def test_every_enum_value_has_a_word_and_words_round_trip() -> None:
    pool = descriptor_pool.Default()
    for full, prefix in RULES.enum_prefixes.items():
        enum = pool.FindEnumTypeByName(full)
        assert all(v.name.startswith(prefix) for v in enum.values), full
        words = restface.enum_words(enum)
        assert len(words) == len(enum.values) - 1, full  # every value but UNSPECIFIED
        assert all(w == w.lower() and "_UNSPECIFIED" not in name for w, name in words.items())
    assert restface.enum_words(enums_pb2.Priority.DESCRIPTOR) == {
        "low": "PRIORITY_LOW",
        "normal": "PRIORITY_NORMAL",
        "high": "PRIORITY_HIGH",
        "critical": "PRIORITY_CRITICAL",
    }


def test_the_submit_request_model_is_the_guides() -> None:
    fields = RULES.requests["orchestrator.v1.ExecuteWorkflowRequest"]
    assert {name for name, rule in fields.items() if rule.get("required")} == {"requirements", "workflow_type"}
    assert fields["configuration"]["kind"] == "object"
    assert fields["priority"]["pattern"] == "^(low|normal|high|critical)$"


def test_every_documented_path_has_a_route_and_streams_stay_out_of_the_lua_filter() -> None:
    patterns = {(r.method, r.pattern) for r in RULES.routes}
    for method, pattern in [
        ("POST", "^/execute%-workflow$"),
        ("POST", "^/api/v1/execute%-workflow$"),
        ("GET", "^/workflow%-status/[^/]+$"),
        ("GET", "^/workflow%-types$"),
        ("GET", "^/health$"),
    ]:
        assert (method, pattern) in patterns
    source = restface.lua_source()
    assert source.startswith("local RULES = {")
    assert "workflow%-events" not in source  # the live endpoint serves streams; Lua would buffer them


def status_json(**overrides: Any) -> dict[str, Any]:
    """GetWorkflowStatusResponse as the transcoder prints it (proto names, defaults printed)."""
    status: dict[str, Any] = {
        "session_id": "s1",
        "workflow_type": "full",
        "state": "WORKFLOW_STATE_COMPLETED",
        "priority": "PRIORITY_HIGH",
        "progress": 100,
        "current_phase": "",
        "phases_completed": ["design"],
        "phases": [{"name": "design", "agent_role": "architect", "state": "PHASE_STATE_COMPLETED", "error": ""}],
        "errors": ["boom"],
        "error_details": [{"phase": "tests", "code": "tests_failed", "message": "boom"}],
        "partial_results": {"design": {"state": "WORKFLOW_STATE_QUEUED"}},
        "result": {"generated_code": [{"path": "app.py"}], "documentation": "# doc", "usage": {"requests": "9"}},
        "usage": {"requests": "6"},
        "last_sequence": "7",
    }
    status.update(overrides)
    return status


def test_status_in_the_guides_words_with_the_result_at_the_top_level() -> None:
    rest = restface.to_rest("orchestrator.v1.GetWorkflowStatusResponse", status_json())
    assert rest["status"] == "completed" and "state" not in rest
    assert rest["priority"] == "high"
    assert rest["phases"][0]["state"] == "completed"
    assert rest["errors"] == [{"phase": "tests", "code": "tests_failed", "message": "boom"}]
    assert "error_details" not in rest and "result" not in rest
    assert rest["generated_code"] == [{"path": "app.py"}] and rest["documentation"] == "# doc"
    assert rest["usage"] == {"requests": "6"}  # the status's own key wins over the inlined result's
    # Free JSON (phase outputs) is the agents' content: never rewritten, whatever it looks like.
    assert rest["partial_results"] == {"design": {"state": "WORKFLOW_STATE_QUEUED"}}


def test_a_status_without_a_result_has_no_result_keys() -> None:
    rest = restface.to_rest(
        "orchestrator.v1.GetWorkflowStatusResponse", {**status_json(state="WORKFLOW_STATE_RUNNING"), "result": {}}
    )
    assert rest["status"] == "running"
    assert "generated_code" not in rest and "documentation" not in rest


def test_submit_reply_says_accepted_and_types_list_names() -> None:
    submit = restface.to_rest(
        "orchestrator.v1.ExecuteWorkflowResponse", {"session_id": "s", "state": "WORKFLOW_STATE_QUEUED"}
    )
    assert submit == {"session_id": "s", "status": "accepted"}
    types = restface.to_rest(
        "orchestrator.v1.ListWorkflowTypesResponse", {"workflow_types": [{"name": "full"}], "names": ["full"]}
    )
    assert types == {"workflow_types": ["full"], "workflow_type_details": [{"name": "full"}]}


def test_events_use_words_for_type_and_status() -> None:
    event = restface.to_rest(
        "orchestrator.v1.WatchWorkflowResponse",
        {"sequence": "3", "type": "EVENT_TYPE_PHASE_STARTED", "state": "WORKFLOW_STATE_RUNNING", "progress": 33},
    )
    assert event == {"sequence": "3", "type": "phase_started", "status": "running", "progress": 33}


@pytest.mark.parametrize(("seconds", "header"), [(0.2, "1"), (1.0, "1"), (1.01, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_and_never_zero(seconds: float, header: str) -> None:
    assert restface.retry_after_header(seconds) == header


def test_error_body_has_the_guides_fields() -> None:
    body = restface.error_body(404, "No workflow session 'x'", request_id="r1")
    assert body["error"] == "NOT_FOUND" and body["detail"] == body["message"] == "No workflow session 'x'"
    assert body["details"] == {} and body["request_id"] == "r1" and body["timestamp"].endswith("Z")

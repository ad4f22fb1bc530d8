"""A REST client generated from docs/openapi.json by an outside generator (openapi-python-client, pinned in the
dev extras) round-trips every REST call through the real Envoy, errors included, with auth off and on.

The client is generated into a temporary directory at test time, from the document as it is now, so a change to
the document or to what is served that a generated client cannot follow fails here. Every reply must parse into
the generator's typed models (never a raw dict), and no model may carry keys the document does not describe
(`additional_properties` stays empty wherever the document lists the properties).

Not covered: `GET /workflow-events/{session_id}`. It streams NDJSON or Server-Sent Events, and OpenAPI 3.0 cannot
describe a response body as a stream of messages (only as one document), so a generated client reads it as one
JSON value and fails; tests/service/test_rest_through_envoy.py covers the stream over REST.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest

from orchestrator.agents import PhaseRunner
from tests.conftest import make_settings
from tests.server_thread import HeldRunner, ServerThread
from tests.service.test_auth import AUDIENCE, ISSUER, SECRET, hs256

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "docs" / "openapi.json"
PACKAGE = "generated_orchestrator_rest_client"
PREFIXES = ["", "ApiV1"]  # the documented paths and their /api/v1 aliases (operationId suffix)

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]


class Generated:
    """The generated package: its operations by operationId, and its models."""

    def __init__(self, package: ModuleType) -> None:
        self.package = package
        self.models = importlib.import_module(f"{PACKAGE}.models")
        api = importlib.import_module(f"{PACKAGE}.api")
        self._operations: dict[str, ModuleType] = {}
        for tag in pkgutil.iter_modules(api.__path__):
            tag_package = importlib.import_module(f"{PACKAGE}.api.{tag.name}")
            for operation in pkgutil.iter_modules(tag_package.__path__):
                self._operations[operation.name] = importlib.import_module(f"{PACKAGE}.api.{tag.name}.{operation.name}")

    def operation(self, operation_id: str) -> ModuleType:
        """`ExecuteWorkflowApiV1` -> the module `.../execute_workflow_api_v1.py`."""
        return self._operations[re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()]

    def __getattr__(self, model: str) -> Any:
        return getattr(self.models, model)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    out = tmp_path_factory.mktemp("generated")
    config = out / "config.yaml"
    # No post hooks: by default the generator runs ruff over its output, which changes nothing a test can see.
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(OPENAPI)]
    command += ["--output-path", str(out / PACKAGE), "--meta", "none", "--config", str(config), "--fail-on-warning"]
    # --fail-on-warning: a part of the document the generator cannot read is a bug in the document.
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(out))
    try:
        yield Generated(importlib.import_module(PACKAGE))
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


class Service:
    def __init__(self, server: ServerThread, runner: HeldRunner, auth: bool) -> None:
        self.server, self.runner, self.auth = server, runner, auth


@pytest.fixture(scope="module", params=["auth-off", "auth-on"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    auth_on = request.param == "auth-on"
    auth: dict[str, Any] = (
        {"enabled": True, "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}
        if auth_on
        else {"enabled": False}
    )
    settings = make_settings(tmp_path_factory.mktemp(f"generated-{request.param}") / "data", envoy=True, auth=auth)
    # The offline model, so a completed workflow has everything a result can hold (code, test report, review).
    runner = HeldRunner(PhaseRunner(settings.agents))
    with ServerThread(settings, runner) as server:
        try:
            yield Service(server, runner, auth_on)
        finally:
            server.run(runner.release())


@pytest.fixture
def client(generated: Generated, service: Service) -> Iterator[Any]:
    """The generated client as its README says to make one: `AuthenticatedClient` with a token when auth is on."""
    options: dict[str, Any] = {"base_url": service.server.base_url, "raise_on_unexpected_status": True}
    if service.auth:
        made = generated.package.AuthenticatedClient(token=hs256(tenant=f"generated-{uuid.uuid4()}"), **options)
    else:
        made = generated.package.Client(**options)
    with made as entered:
        yield entered


def undocumented(value: Any, where: str = "body") -> list[str]:
    """Keys the server sent that the document does not describe: the `additional_properties` of every model
    that declares its properties (free-form objects, `additionalProperties: {}`, declare none)."""
    found: list[str] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += undocumented(item, f"{where}[{i}]")
    elif attrs.has(type(value)):
        declared = [f.name for f in attrs.fields(type(value)) if f.name != "additional_properties"]
        extra = getattr(value, "additional_properties", {})
        if declared and extra:
            found += [f"{where}.{key}" for key in extra]
        for name in declared:
            found += undocumented(getattr(value, name), f"{where}.{name}")
    return found


def call(generated: Generated, client: Any, operation_id: str, expected: int, model: str, /, **kwargs: Any) -> Any:
    """Calls `operation_id` and returns its parsed reply, after checking the status and the model it parsed to."""
    response = generated.operation(operation_id).sync_detailed(client=client, **kwargs)
    assert response.status_code == expected, (operation_id, response.status_code, response.content)
    parsed = response.parsed
    assert isinstance(parsed, getattr(generated, model)), (operation_id, type(parsed), response.content)
    assert undocumented(parsed) == [], (operation_id, undocumented(parsed), response.content)
    return parsed


def wait_for_status(
    generated: Generated, client: Any, prefix: str, session_id: str, done: Callable[[Any], bool]
) -> Any:
    deadline = time.monotonic() + 30
    while True:
        status = call(
            generated, client, f"GetWorkflowStatus{prefix}", 200, "V1GetWorkflowStatusResponse", session_id=session_id
        )
        if done(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def submit(generated: Generated, client: Any, prefix: str, **fields: Any) -> Any:
    body = generated.V1ExecuteWorkflowRequest(
        **{"requirements": "Create a calculator", "workflow_type": "full", **fields}
    )
    return call(generated, client, f"ExecuteWorkflow{prefix}", 200, "V1ExecuteWorkflowResponse", body=body)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_execute_and_status_round_trip_into_typed_models(generated: Generated, client: Any, prefix: str) -> None:
    configuration = generated.ProtobufStruct.from_dict({"language": "python", "team": "blue"})
    reply = submit(generated, client, prefix, configuration=configuration, priority=generated.V1Priority.HIGH)
    assert reply.status is generated.V1ExecuteWorkflowResponseStatus.ACCEPTED
    assert reply.created is True and reply.created_at <= reply.estimated_completion
    assert [w for w in reply.warnings if "'team'" in w], reply.warnings

    states = generated.V1WorkflowState
    status = wait_for_status(
        generated, client, prefix, reply.session_id, lambda s: s.status in {states.COMPLETED, states.FAILED}
    )
    assert status.status is states.COMPLETED, status.errors
    assert status.priority is generated.V1Priority.HIGH
    assert status.progress == 100 and status.current_phase == "" and status.errors == []
    assert all(
        isinstance(p, generated.V1PhaseStatus) and p.state is generated.V1PhaseState.COMPLETED for p in status.phases
    )
    assert sorted(status.phases_completed) == sorted(p.name for p in status.phases)
    assert isinstance(status.partial_results, generated.ProtobufStruct)
    assert "requirements" in status.partial_results.additional_properties
    assert status.generated_code and all(isinstance(f, generated.V1GeneratedFile) for f in status.generated_code)
    assert isinstance(status.test_report, generated.V1TestReport) and status.test_report.success
    assert isinstance(status.review, generated.V1Review)
    assert isinstance(status.usage, generated.V1Usage) and int(status.usage.requests) > 0
    assert status.documentation


@pytest.mark.parametrize("prefix", PREFIXES)
def test_execute_errors_parse_as_the_documented_error_models(generated: Generated, client: Any, prefix: str) -> None:
    unknown = generated.V1ExecuteWorkflowRequest(requirements="Test", workflow_type="invalid")
    error = call(generated, client, f"ExecuteWorkflow{prefix}", 400, "ErrorResponse", body=unknown)
    assert "Unknown workflow type" in error.detail and error.error and error.message
    assert isinstance(error.details, generated.ErrorResponseDetails)

    # The generated request model does not check types, so a wrong one reaches the server: FastAPI's 422.
    mistyped = generated.V1ExecuteWorkflowRequest(requirements=123, workflow_type="full")
    invalid = call(generated, client, f"ExecuteWorkflow{prefix}", 422, "ValidationErrorResponse", body=mistyped)
    (problem,) = invalid.detail
    assert isinstance(problem, generated.ValidationError)
    assert problem.loc == ["body", "requirements"] and problem.type_ == "string_type" and problem.msg


@pytest.mark.parametrize("prefix", PREFIXES)
def test_status_of_an_unknown_session_is_a_404_error_response(generated: Generated, client: Any, prefix: str) -> None:
    nowhere = str(uuid.uuid4())
    error = call(generated, client, f"GetWorkflowStatus{prefix}", 404, "ErrorResponse", session_id=nowhere)
    assert nowhere in error.detail and error.request_id


@pytest.mark.parametrize("prefix", PREFIXES)
def test_list_workflows_with_filters_and_its_errors(generated: Generated, client: Any, prefix: str) -> None:
    reply = submit(generated, client, prefix, workflow_type="design")
    states = generated.V1WorkflowState
    wait_for_status(generated, client, prefix, reply.session_id, lambda s: s.status is states.COMPLETED)
    page = call(generated, client, f"ListWorkflows{prefix}", 200, "V1ListWorkflowsResponse", page_size=1000)
    assert all(isinstance(w, generated.V1WorkflowSummary) for w in page.workflows)
    assert reply.session_id in [w.session_id for w in page.workflows]
    status_filter = getattr(generated, f"ListWorkflows{prefix}Status")
    completed = call(
        generated,
        client,
        f"ListWorkflows{prefix}",
        200,
        "V1ListWorkflowsResponse",
        status=status_filter.COMPLETED,
        workflow_type="design",
    )
    assert completed.workflows and {w.status for w in completed.workflows} == {states.COMPLETED}
    error = call(generated, client, f"ListWorkflows{prefix}", 400, "ErrorResponse", page_size=-1)
    assert "page_size" in error.detail


@pytest.mark.parametrize("prefix", PREFIXES)
def test_workflow_types(generated: Generated, client: Any, prefix: str) -> None:
    types = call(generated, client, f"ListWorkflowTypes{prefix}", 200, "V1ListWorkflowTypesResponse")
    assert "full" in types.workflow_types
    assert types.workflow_types == [t.name for t in types.workflow_type_details]
    full = next(t for t in types.workflow_type_details if t.name == "full")
    assert all(isinstance(p, generated.V1PhaseDefinition) for p in full.phases)
    assert all(isinstance(k, generated.V1ConfigurationKey) for k in full.configuration_keys)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_cancel_and_its_errors(generated: Generated, client: Any, prefix: str) -> None:
    reply = submit(
        generated, client, prefix, configuration=generated.ProtobufStruct.from_dict({HeldRunner.HOLD: "design"})
    )
    states = generated.V1WorkflowState
    wait_for_status(generated, client, prefix, reply.session_id, lambda s: s.current_phase == "design")
    body = generated.CancelWorkflowBody(reason="changed my mind")
    operation = f"CancelWorkflow{prefix}"
    cancelled = call(
        generated, client, operation, 200, "V1CancelWorkflowResponse", session_id=reply.session_id, body=body
    )
    assert cancelled.session_id == reply.session_id and cancelled.status is states.CANCELLED
    again = call(generated, client, operation, 400, "ErrorResponse", session_id=reply.session_id, body=body)
    assert again.error and again.detail == again.message
    nowhere = str(uuid.uuid4())
    missing = call(generated, client, operation, 404, "ErrorResponse", session_id=nowhere, body=body)
    assert nowhere in missing.detail
    status = wait_for_status(generated, client, prefix, reply.session_id, lambda s: True)
    assert status.status is states.CANCELLED
    assert [e for e in status.errors if isinstance(e, generated.V1WorkflowError) and "changed my mind" in e.message]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_health(generated: Generated, client: Any, prefix: str) -> None:
    health = call(generated, client, f"Health{prefix}", 200, "V1HealthResponse")
    assert (
        isinstance(health.status, generated.V1ServingStatus)
        and health.status is not generated.V1ServingStatus.NOT_SERVING
    )
    assert {d.name for d in health.dependencies} >= {"database", "engine", "model_provider"}
    assert all(isinstance(d.status, Enum) for d in health.dependencies)


def test_without_a_token_the_401_parses_as_an_error_response(generated: Generated, service: Service) -> None:
    if not service.auth:
        pytest.skip("auth off: there is no token to miss")
    with generated.package.Client(base_url=service.server.base_url, raise_on_unexpected_status=True) as anonymous:
        error = call(generated, anonymous, "ListWorkflowTypes", 401, "ErrorResponse")
    assert error.error and error.detail == error.message

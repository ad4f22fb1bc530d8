"""clients/node/example.js, the Node.js client example (@grpc/grpc-js), run with node against the real service,
including one that starts late."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from service.app import App
from tests.clients.tcp import reserved_port
from tests.clients.test_python_clients import OLD_RETRY_BUDGET
from tests.conftest import make_settings
from tests.runners import ScriptedRunner

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "node"


def _require_node() -> str:
    node = shutil.which("node")
    missing = "node is not installed" if node is None else None
    if node and not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing = "clients/node has no node_modules: run `npm ci` there (scripts/test.sh does)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


async def run_example(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        _require_node(),
        str(EXAMPLE / "example.js"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 45)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_node_example_submits_watches_and_reads_the_status(app: App) -> None:
    code, stdout, stderr = await run_example(
        "--target", f"127.0.0.1:{app.grpc_port}", "--type", "full", "--config", '{"language": "python"}'
    )
    assert code == 0, stderr
    output = json.loads(stdout)
    events = output["events"]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))  # int64 as strings
    assert events[0]["type"] == "EVENT_TYPE_WORKFLOW_QUEUED"
    assert events[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"
    assert "EVENT_TYPE_HEARTBEAT" not in {e["type"] for e in events}
    status = output["status"]
    assert status["state"] == "WORKFLOW_STATE_COMPLETED"
    assert status["progress"] == 100
    assert status["phases_completed"] == [
        "requirements",
        "design",
        "implementation",
        "tests",
        "review",
        "documentation",
    ]
    assert status["last_sequence"] == events[-1]["sequence"]
    assert status["partial_results"]["design"]["role"] == "architect"  # a Struct, turned back into JSON
    assert status["result"]["files"] == ["app.py"]
    assert status["result"]["usage"]["input_tokens"] == "60"
    assert status["model"] == "scripted"


async def test_node_example_reports_a_refused_request(app: App) -> None:
    code, stdout, stderr = await run_example("--target", f"127.0.0.1:{app.grpc_port}", "--type", "no-such-type")
    assert code == 2
    assert stdout == ""
    assert "INVALID_ARGUMENT" in stderr and "no-such-type" in stderr


async def test_node_example_waits_out_a_server_that_starts_late(tmp_path: Path, runner: ScriptedRunner) -> None:
    """The example is refused for longer than the old 5 retries (about 3 s) allowed; it retries by its deadline,
    one line on stderr each, and completes once the server is up."""
    with reserved_port() as port:
        process = await asyncio.create_subprocess_exec(
            _require_node(),
            str(EXAMPLE / "example.js"),
            "--target",
            f"127.0.0.1:{port}",
            "--type",
            "design",
            "--retry-timeout",
            "60",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        app: App | None = None
        try:
            assert process.stderr is not None and process.stdout is not None
            refused: list[str] = []
            while len(refused) <= OLD_RETRY_BUDGET:
                line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
                assert line, f"the example exited after {refused}"
                refused.append(line)
            assert all("ExecuteWorkflow: UNAVAILABLE" in line for line in refused), refused
            app = App(make_settings(tmp_path / "data", grpc_port=port), runner=runner)
            await app.start()
            stdout, _ = await asyncio.wait_for(process.communicate(), 45)
            assert process.returncode == 0
            events = json.loads(stdout)["events"]
            assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
            assert events[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if app is not None:
                await app.stop(grace=0.5)

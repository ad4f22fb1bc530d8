"""The `orchestrator` command against a real server, and request ids in the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import grpc
import pytest

from orchestrator.definitions import load_catalog
from orchestrator.errors import DefinitionError
from service import logs
from service.app import App
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.clients.tcp import reserved_port
from tests.clients.test_python_clients import OLD_RETRY_BUDGET
from tests.conftest import make_settings
from tests.runners import ScriptedRunner

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_cli_submit_watch_status_list_types_cancel(app: App) -> None:
    target = f"127.0.0.1:{app.grpc_port}"
    code, out, _ = await cli("submit", "a tiny calculator", "--type", "design", "--watch", "--target", target)
    assert code == 0, out
    first = json.loads(out[: out.index("\n}\n") + 2])
    assert first["state"] == "WORKFLOW_STATE_QUEUED"
    assert "100%" in out and "workflow_completed" in out
    code, out, _ = await cli("status", first["session_id"], "--target", target)
    assert code == 0 and json.loads(out)["state"] == "WORKFLOW_STATE_COMPLETED"
    code, out, _ = await cli("list", "--state", "completed", "--target", target)
    assert [w["session_id"] for w in json.loads(out)["workflows"]] == [first["session_id"]]
    code, out, _ = await cli("types", "--target", target)
    assert "full" in {t["name"] for t in json.loads(out)["workflow_types"]}
    code, out, err = await cli("cancel", first["session_id"], "--target", target)
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, out, err = await cli("status", "no-such-session", "--target", target)
    assert code == 1 and "NOT_FOUND" in err


async def test_serve_refuses_bad_settings_with_a_clear_message() -> None:
    code, _, err = await cli("serve", "--max-running-workflows", "0", "--no-envoy")
    assert code == 2
    assert "max_running_workflows" in err


async def test_logs_carry_the_request_id(
    stub: pb_grpc.OrchestratorServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(logs._ContextFilter())
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetWorkflowStatus(
            pb.GetWorkflowStatusRequest(session_id="gone"), metadata=(("x-request-id", "log-rid-7"),)
        )
    records = [r for r in caplog.records if "NOT_FOUND" in r.getMessage()]
    assert records and records[0].request_id == "log-rid-7"  # type: ignore[attr-defined]
    assert records[0].session_id == "gone"  # type: ignore[attr-defined]
    line = json.loads(logs.JsonFormatter().format(records[0]))
    assert line["request_id"] == "log-rid-7" and line["level"] == "INFO"


def test_a_bad_operator_workflow_type_fails_at_start_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "name: mine\ndescription: x\nphases:\n"
        "  - {name: a, role: wizard}\n"
        "  - {name: b, role: engineer, depends_on: [z]}\n"
    )
    with pytest.raises(DefinitionError) as caught:
        load_catalog(tmp_path)
    assert "mine.yaml" in caught.value.message and "wizard" in caught.value.message
    (tmp_path / "mine.yaml").write_text("name: mine\ndescription: mine\nphases:\n  - {name: a, role: analyst}\n")
    assert "mine" in load_catalog(tmp_path).names()


async def test_cli_waits_out_a_server_that_starts_late_by_its_retry_timeout(tmp_path: Path) -> None:
    with reserved_port() as port:
        target = f"127.0.0.1:{port}"
        code, _, err = await cli("types", "--target", target, "--retry-timeout", "0")
        assert code == 1 and "UNAVAILABLE" in err  # 0: no retries
        code, _, err = await cli("types", "--target", target, "--retry-timeout", "-1")
        assert code == 2 and "--retry-timeout" in err
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "service", "types", "--target", target),  # the default timeout: minutes
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        app: App | None = None
        try:
            assert process.stderr is not None
            refused = []
            while len(refused) <= OLD_RETRY_BUDGET:  # longer than the old clients waited
                line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
                assert line, f"the command exited after {refused}"
                refused.append(line)
            assert all(line.startswith("ListWorkflowTypes: UNAVAILABLE") for line in refused), refused
            app = App(make_settings(tmp_path / "data", grpc_port=port), runner=ScriptedRunner())
            await app.start()
            out, _ = await asyncio.wait_for(process.communicate(), 45)
            assert process.returncode == 0
            assert "design" in {t["name"] for t in json.loads(out)["workflow_types"]}
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if app is not None:
                await app.stop(grace=0.5)

"""A real Prometheus (Debian's package) scrapes the service through its Envoy sidecar, evaluates the shipped alert
rules, and answers PromQL queries over the domain metrics after a workflow ran on the offline model."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.app import App
from tests.conftest import make_settings
from tests.observability import DEPLOY, listening_ports, require_tool, run_workflow, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(200)]


@pytest.fixture
async def rest_app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data", envoy=True))  # the real runner, on the offline model
    try:
        await application.start()
        yield application
    finally:
        await application.stop(grace=0.5)


@pytest.fixture
def prometheus(tmp_path: Path, rest_app: App) -> Iterator[str]:
    binary = require_tool("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "orchestrator",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{rest_app.http_port}"]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--web.listen-address=127.0.0.1:0",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"{process.pid}"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


async def test_prometheus_scrapes_through_envoy_and_queries_the_domain_metrics(
    rest_app: App, prometheus: str, tmp_path: Path
) -> None:
    pid = int(prometheus)

    async def bound() -> int | None:
        ports = listening_ports(pid)
        return min(ports) if ports else None

    port = await wait_for(bound, 30, "Prometheus to listen")
    base = f"http://127.0.0.1:{port}"
    _, types = await run_workflow(rest_app, "full")
    assert types[-1] == "EVENT_TYPE_WORKFLOW_COMPLETED"

    async with httpx.AsyncClient(base_url=base, timeout=10) as http:

        async def query(expr: str) -> list[dict[str, Any]] | None:
            response = await http.get("/api/v1/query", params={"query": expr})
            if response.status_code != 200:  # not ready yet (503) or a bad query (400, which fails below)
                assert response.status_code == 503, response.text
                return None
            return list(response.json()["data"]["result"]) or None

        up = await wait_for(lambda: query('up{job="orchestrator"} == 1'), 60, "a successful scrape through Envoy")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{rest_app.http_port}"  # Envoy's port, not the service's

        finished = await wait_for(
            lambda: query('orchestrator_workflows_finished_total{workflow_type="full",state="completed"} >= 1'),
            60,
            "the finished workflow in Prometheus",
        )
        assert float(finished[0]["value"][1]) == 1
        tokens = await query('sum by (model, token_type) (orchestrator_model_tokens_total{model="offline"})')
        assert tokens is not None and {r["metric"]["token_type"] for r in tokens} == {"input", "output"}
        assert await query('orchestrator_sandbox_runs_total{outcome="passed"} == 1')
        assert await query('orchestrator_model_requests_total{model="offline",outcome="ok"} >= 6')
        assert await query('orchestrator_workflows_queued{workflow_type="full"} == 0')
        assert await query("orchestrator_workflows_running == 0")
        phases = await query('count(orchestrator_phase_duration_seconds_count{workflow_type="full"})')
        assert phases is not None and float(phases[0]["value"][1]) == 6
        assert await query('grpc_server_handled_total{grpc_method="ExecuteWorkflow",grpc_code="OK"} == 1')

        # The shipped alert rules load and evaluate against the real series without errors, and none fires.
        seen: list[Any] = []

        async def evaluated() -> list[dict[str, Any]] | None:
            groups = (await http.get("/api/v1/rules")).json()["data"]["groups"]
            seen[:] = groups
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) else None

        try:
            # A shared machine under load can delay the first evaluation; the wait is generous, not a measurement.
            rules = await wait_for(evaluated, 75, "the alert rules to be evaluated")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the rules API said: {json.dumps(seen)[:3000]}") from None
        assert {rule["health"] for rule in rules} == {"ok"}, rules
        assert all(rule["state"] == "inactive" for rule in rules), [r for r in rules if r["state"] != "inactive"]
    await asyncio.sleep(0)  # keep the event loop's callbacks flushed before the fixtures stop the servers

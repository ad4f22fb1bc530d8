"""Builds the Envoy v3 bootstrap that serves the orchestrator's REST API in front of its gRPC service.

`build_envoy_config` has no side effects: the same options (and descriptor file) always give the same dict,
and the result is self-contained (the descriptor set is embedded, so the YAML also works for an Envoy that runs
elsewhere, as a front proxy). `write_envoy_config` dumps it as YAML.
Each setting that guards against a measured Envoy 1.40 trap says so beside it (see shared/notes/envoy.md).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from google.protobuf import descriptor_pb2

from gateway import restface
from gateway.restface import DEFAULT_DESCRIPTOR, SERVICE

JsonDict = dict[str, Any]

MiB: Final = 1024 * 1024

GRPC_CLUSTER: Final = "orchestrator_grpc"
METRICS_CLUSTER: Final = "orchestrator_metrics"
# The service's live endpoint (service/live.py, HTTP/1.1): the guide's WebSocket and the REST watch (WatchWorkflow's
# REST paths: NDJSON, or Server-Sent Events with `id:` lines for a request that accepts text/event-stream).
LIVE_CLUSTER: Final = "orchestrator_live"
# The grpc.health.v1 name the sidecar checks its upstream with (service/server.py's LIVENESS; gateway/ does not
# import the service).
UPSTREAM_HEALTH_NAME: Final = "liveness"
WATCH_PATH_REGEX: Final = r"^(/api/v1)?/workflow-events/[^/]+$"
WEBSOCKET_PATH_REGEX: Final = r"^(/api/v1)?/ws/[^/]+$"

_TRANSCODER: Final = "envoy.filters.http.grpc_json_transcoder"
_LUA: Final = "envoy.filters.http.lua"
_HEADER_MUTATION: Final = "envoy.filters.http.header_mutation"
_CORS: Final = "envoy.filters.http.cors"
_BUFFER: Final = "envoy.filters.http.buffer"
_ROUTER: Final = "envoy.filters.http.router"

_TYPE_PREFIX: Final = "type.googleapis.com/"

# On every reply, Envoy's own included.
SECURITY_HEADERS: Final[dict[str, str]] = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    # The guide's third header. Modern browsers ignore it; the guide's clients check for it.
    "x-xss-protection": "1; mode=block",
}
# On API replies (not /docs or /redoc, whose HTML pages need scripts and may be cached).
API_HEADERS: Final[dict[str, str]] = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
}

# Envoy warns at every start without a limit; this one only guards against file descriptor exhaustion.
MAX_DOWNSTREAM_CONNECTIONS: Final = 10_000

# Host headers the REST listener answers by default; a port equal to the listener's own is stripped before
# matching, so "localhost:8080" on port 8080 matches "localhost". Others get 421: a browser page on another
# site that resolves its name to 127.0.0.1 (DNS rebinding) cannot reach the API.
DEFAULT_ALLOWED_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")
MISDIRECTED_BODY: Final = "this server does not serve the host named in the request's Host header"

# Envoy's own text for these names upstream hosts, TLS failures and the like: the access log keeps it
# (RESPONSE_CODE_DETAILS), clients get a fixed message.
UPSTREAM_TROUBLE: Final[dict[int, str]] = {
    500: "internal error",
    502: "the service answered with something that is not a valid reply; retry shortly",
    503: "the service is unavailable; retry shortly",
    504: "the service did not answer in time; retry shortly",
}

CORS_ALLOW_METHODS: Final = "GET, POST, OPTIONS"
# last-event-id: SSE clients built on fetch (EventSource polyfills) send it to resume, and it is not CORS-safelisted
# (browsers' own EventSource is exempt).
CORS_ALLOW_HEADERS: Final = "content-type, accept, authorization, x-request-id, last-event-id"
CORS_EXPOSE_HEADERS: Final = "x-request-id"
CORS_MAX_AGE_SECONDS: Final = 600


@dataclass(frozen=True, kw_only=True)
class GatewayOptions:
    """Where Envoy listens, where the service is, and the limits of the REST API."""

    grpc_port: int
    metrics_port: int
    live_port: int
    grpc_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    live_host: str = "127.0.0.1"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    # 0 picks a free port, so any number of sidecars share a host; EnvoySidecar reads the port Envoy chose from
    # the file named by --admin-address-path. `python -m gateway render` keeps 9901 for a standalone Envoy.
    admin_port: int = 0
    descriptor_path: Path = DEFAULT_DESCRIPTOR
    # Host header values the REST listener answers (Envoy `domains`: name, name:port, *.suffix, prefix.*), or
    # ("*",) for any.
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    cors_allowed_origins: tuple[str, ...] = ()
    max_request_bytes: int = MiB
    # The whole request, headers and body: a body that trickles in forever gets 408 instead of holding a
    # connection. Envoy disarms it once the request is complete or the response starts, so watch streams and
    # WebSockets (101 is a response) are not cut.
    request_timeout_seconds: float = 60.0
    max_response_bytes: int = 16 * MiB
    # TLS to the gRPC service: on when upstream_ca_file is set (Envoy verifies the service's certificate with it
    # and expects upstream_server_name in its subjectAltName); a client certificate too for mutual TLS. Absolute
    # paths: Envoy reads them itself, from its own working directory.
    upstream_ca_file: Path | None = None
    upstream_cert_file: Path | None = None
    upstream_key_file: Path | None = None
    upstream_server_name: str = "localhost"

    def __post_init__(self) -> None:
        for name in ("listen_port", "admin_port"):
            _check_port(name, getattr(self, name), allow_zero=True)
        for name in ("grpc_port", "metrics_port", "live_port"):
            _check_port(name, getattr(self, name), allow_zero=False)
        for name in ("grpc_host", "metrics_host", "live_host"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        _check_ip("listen_host", self.listen_host)
        if not _check_ip("admin_host", self.admin_host).is_loopback:
            # The admin endpoint can stop Envoy and dump its config: it must never leave the host.
            raise ValueError(f"admin_host must be a loopback address, not {self.admin_host!r}")
        if not 0 < self.request_timeout_seconds <= 3600:
            raise ValueError("request_timeout_seconds must be in (0, 3600]")
        for name in ("max_request_bytes", "max_response_bytes"):
            if not 0 < getattr(self, name) < 2**32:
                raise ValueError(f"{name} must be in 1..4294967295")
        for origin in self.cors_allowed_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                raise ValueError(f"CORS origin must look like https://host[:port], not {origin!r}")
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts must name at least one host (or '*' for any)")
        for host in self.allowed_hosts:
            if not host or any(c.isspace() or c in "/?#@" for c in host):
                raise ValueError(f"allowed host must look like name[:port], not {host!r}")
        if len({host.lower() for host in self.allowed_hosts}) != len(self.allowed_hosts):
            raise ValueError("allowed_hosts has duplicates, which Envoy refuses")
        for name in ("upstream_ca_file", "upstream_cert_file", "upstream_key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_absolute():
                raise ValueError(f"{name} must be an absolute path (Envoy runs in its own directory), not {path}")
        if (self.upstream_cert_file is None) != (self.upstream_key_file is None):
            raise ValueError("set upstream_cert_file and upstream_key_file together")
        if self.upstream_cert_file is not None and self.upstream_ca_file is None:
            raise ValueError("a client certificate for the upstream needs TLS: set upstream_ca_file too")
        server_name = self.upstream_server_name
        if not _is_ip(server_name) and (not server_name or any(c.isspace() or c in "/:[]" for c in server_name)):
            raise ValueError(f"upstream_server_name must be a host name or an IP address, not {server_name!r}")

    @property
    def upstream_tls(self) -> bool:
        return self.upstream_ca_file is not None


def build_envoy_config(options: GatewayOptions) -> JsonDict:
    """Returns the complete Envoy v3 bootstrap for `options`; reads the descriptor set, writes nothing."""
    descriptor = _embedded_descriptor(Path(options.descriptor_path))
    return {
        "node": {"id": "orchestrator-gateway", "cluster": "orchestrator-gateway"},
        "admin": {"address": _socket_address(options.admin_host, options.admin_port)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE_PREFIX
                        + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [_listener(options, descriptor)],
            "clusters": [_grpc_cluster(options), _metrics_cluster(options), _live_cluster(options)],
        },
    }


def write_envoy_config(options: GatewayOptions, path: Path) -> Path:
    """Writes the bootstrap for `options` to `path` as YAML and returns the path."""
    path.write_text(render_yaml(options))
    return path


def render_yaml(options: GatewayOptions) -> str:
    """The bootstrap for `options` as YAML text."""
    return yaml.safe_dump(build_envoy_config(options), sort_keys=False, default_flow_style=False)


def _embedded_descriptor(path: Path) -> str:
    """The descriptor set at `path`, base64-encoded, without source comments: Envoy never reads them, and they
    are most of the file (the YAML holds it twice, once per transcoder config)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    for file in files.file:
        file.ClearField("source_code_info")
    return base64.b64encode(files.SerializeToString(deterministic=True)).decode("ascii")


# --- listener -----------------------------------------------------------------------------------


def _listener(options: GatewayOptions, descriptor: str) -> JsonDict:
    hcm: JsonDict = {
        "@type": _TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "rest",
        "codec_type": "AUTO",
        "use_remote_address": True,
        # x-request-id: kept when the client sends one, generated otherwise, forwarded to the service (which
        # quotes it in its errors) and echoed to the client.
        "generate_request_id": True,
        "preserve_external_request_id": True,
        "always_set_request_id_in_response": True,
        "normalize_path": True,
        "merge_slashes": True,
        # Host matching ignores a port equal to the listener's own (also when it was bound to port 0), so the
        # allowed names need no port and a Host with another port is not taken for them.
        "strip_matching_host_port": True,
        "request_headers_timeout": "10s",
        "request_timeout": _duration(options.request_timeout_seconds),
        "access_log": [_access_log()],
        "local_reply_config": _local_reply_config(),
        "route_config": _route_config(options, descriptor),
        "http_filters": _http_filters(options, descriptor),
    }
    return {
        "name": "rest",
        "address": _socket_address(options.listen_host, options.listen_port),
        # Envoy binds listeners with SO_REUSEPORT by default: a second instance given the same --http-port then
        # starts "fine" and the kernel splits REST clients between two unrelated services. Off, it fails to bind.
        "enable_reuse_port": False,
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def _access_log() -> JsonDict:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _TYPE_PREFIX + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    # The path as the client sent it, without its query: a client that puts a token in the query
                    # string must not see it land in a log. (NQ: no query; ORIG_OR_PATH: as sent, before the
                    # transcoder rewrote it.)
                    "path": "%PATH(NQ:ORIG_OR_PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS(NUMBER)%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "duration_ms": "%DURATION%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                }
            },
        },
    }


def _http_filters(options: GatewayOptions, descriptor: str) -> list[JsonDict]:
    # Order matters. Encoding runs the chain backwards, so header_mutation, placed BEFORE the transcoder, sees
    # the response after the transcoder has turned grpc-status into an HTTP status. Removing grpc-status any
    # earlier (route response_headers_to_remove) turns every error into an empty 200.
    return [
        # First, so that its response half sees every reply the later filters and the router make (Envoy runs
        # a local reply through the whole encoder chain) and gives each the guide's error body.
        {
            "name": _LUA,
            "typed_config": {
                "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": restface.lua_source(Path(options.descriptor_path))},
            },
        },
        {
            "name": _CORS,
            "typed_config": {"@type": _TYPE_PREFIX + "envoy.extensions.filters.http.cors.v3.Cors"},
        },
        {
            "name": _HEADER_MUTATION,
            # Empty here: only the REST routes carry mutations (per route), so native gRPC replies keep their
            # grpc-status, which a trailers-only gRPC error carries in its headers.
            "typed_config": {"@type": _TYPE_PREFIX + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"},
        },
        {
            "name": _BUFFER,
            "typed_config": {
                "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": options.max_request_bytes,
            },
        },
        {"name": _TRANSCODER, "typed_config": _transcoder(options, descriptor)},
        {
            "name": _ROUTER,
            "typed_config": {"@type": _TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router"},
        },
    ]


def _transcoder(options: GatewayOptions, descriptor: str) -> JsonDict:
    print_options: JsonDict = {
        "preserve_proto_field_names": True,
        "always_print_primitive_fields": True,
        # REST watches are the live endpoint's (_live_route); should a stream ever be transcoded, NDJSON beats
        # the default, one JSON array sent piecemeal, which no line-based client can read.
        "stream_newline_delimited": True,
    }
    return {
        "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        # Embedded, so the YAML stands alone. Must contain google/rpc/error_details.proto, or errors with
        # details reach clients as empty bodies.
        "proto_descriptor_bin": descriptor,
        "services": [SERVICE],
        "convert_grpc_status": True,
        "print_options": print_options,
        # Without these, an unknown path or query parameter goes upstream and comes back as a bare 503.
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            # `POST /cancel-workflow/a` with {"session_id": "b"} in the body is refused, not resolved.
            "reject_binding_body_field_collisions": True,
        },
        # The transcoder buffers a whole unary response (and each stream message); past its default limit
        # (the 1 MiB connection buffer) a large status becomes a 500 and a large event resets the stream.
        "max_request_body_size": options.max_request_bytes,
        "max_response_body_size": options.max_response_bytes,
    }


# --- routes -------------------------------------------------------------------------------------


def _route_config(options: GatewayOptions, descriptor: str) -> JsonDict:
    any_host = "*" in options.allowed_hosts
    virtual_host: JsonDict = {
        "name": "orchestrator",
        "domains": ["*"] if any_host else list(options.allowed_hosts),
        "routes": [
            *_get_only(_metrics_route({"path": "/metrics"}, "metrics")),
            *_get_only(_metrics_route({"path": "/openapi.json"}, "openapi")),
            *_get_only(_metrics_route({"path_separated_prefix": "/docs"}, "docs")),
            *_get_only(_metrics_route({"path_separated_prefix": "/redoc"}, "redoc")),
            # Native gRPC clients, and REST requests once the transcoder has rewritten them into gRPC (it
            # clears the route cache, so they are routed again). No header mutation: gRPC clients need
            # grpc-status, which a trailers-only gRPC error carries in its headers.
            {
                "name": "grpc",
                "match": {"prefix": "/", "grpc": {}},
                "route": _grpc_action(),
                "response_headers_to_add": _headers(API_HEADERS),
            },
            *_get_only(_live_route("websocket", WEBSOCKET_PATH_REGEX, websocket=True)),
            *_get_only(_live_route("rest-watch", WATCH_PATH_REGEX, websocket=False)),
            {
                "name": "rest",
                "match": {"prefix": "/"},
                "route": _grpc_action(),
                "response_headers_to_add": _headers(API_HEADERS),
                "typed_per_filter_config": {_HEADER_MUTATION: _hide_grpc_headers()},
            },
        ],
    }
    if options.cors_allowed_origins:
        virtual_host["typed_per_filter_config"] = {_CORS: _cors_policy(options.cors_allowed_origins)}
    return {
        "name": "orchestrator",
        "response_headers_to_add": _headers(SECURITY_HEADERS),
        "virtual_hosts": [virtual_host] if any_host else [virtual_host, _other_hosts()],
    }


def _other_hosts() -> JsonDict:
    """Every Host not allowed, for every path: 421 here, which local_reply_config turns into the guide's 400
    (Starlette's TrustedHostMiddleware answers 400 "Invalid host header")."""
    return {
        "name": "other-hosts",
        "domains": ["*"],
        "routes": [
            {
                "name": "host-not-allowed",
                "match": {"prefix": "/"},
                "direct_response": {"status": 421, "body": {"inline_string": MISDIRECTED_BODY}},
                "response_headers_to_add": _headers(API_HEADERS),
                # Neither transcoded nor checked by the REST face: the answer is the same whatever the path or
                # body (a body that fails the request model must not get a 422 before the Host is refused).
                "typed_per_filter_config": _not_transcoded(),
            }
        ],
    }


def _grpc_action() -> JsonDict:
    # 0s disables the route timeout: the default 15 s would cut every watch stream.
    return {"cluster": GRPC_CLUSTER, "timeout": "0s"}


def _get_only(route: JsonDict) -> list[JsonDict]:
    """`route` for GET and HEAD, then 405 (as the guide's JSON, through local_reply_config) for other methods on
    the same paths: the servers behind these routes would answer them with their own text or HTML."""
    get = {**route, "match": {**route["match"], "headers": [_METHOD_IS_GET]}}
    refuse = {
        "name": f"{route['name']}-method-not-allowed",
        "match": route["match"],
        "direct_response": {"status": 405, "body": {"inline_string": "this path answers GET only"}},
        "response_headers_to_add": _headers({"allow": "GET, HEAD"}),
        "typed_per_filter_config": _not_transcoded(),
    }
    return [get, refuse]


_METHOD_IS_GET: Final = {"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}


def _live_route(name: str, regex: str, *, websocket: bool) -> JsonDict:
    """A route to the live endpoint. The transcoder's framing of a server stream has no SSE `id:` lines and no
    WebSocket, so these paths skip it (and the REST face, which buffers bodies: the service sends the REST face's
    JSON itself)."""
    action: JsonDict = {"cluster": LIVE_CLUSTER, "timeout": "0s"}  # 0s: the default 15 s would cut every stream
    per_filter = _not_transcoded()
    if websocket:
        # Enabled on this route only. The buffer filter would wait for the end of an upgraded request's body,
        # which never comes.
        action["upgrade_configs"] = [{"upgrade_type": "websocket"}]
        per_filter[_BUFFER] = {
            "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "disabled": True,
        }
    return {
        "name": name,
        "match": {"safe_regex": {"regex": regex}},
        "route": action,
        # Envoy strips a Host port equal to its own; the service compares a WebSocket's Origin with Host and this.
        "request_headers_to_add": [
            {
                "header": {"key": "x-forwarded-port", "value": "%DOWNSTREAM_LOCAL_PORT%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "response_headers_to_add": _headers(API_HEADERS),
        "typed_per_filter_config": per_filter,
    }


def _metrics_route(match: JsonDict, name: str) -> JsonDict:
    route: JsonDict = {
        "name": name,
        "match": match,
        "route": {"cluster": METRICS_CLUSTER},
        # With reject_unknown_method on, the transcoder would answer 404 for every non-gRPC path; the REST face
        # has nothing to reshape in metrics or pages.
        "typed_per_filter_config": _not_transcoded(),
    }
    if name not in ("docs", "redoc"):  # the pages bring their own policy and caching
        route["response_headers_to_add"] = _headers(API_HEADERS)
    return route


def _not_transcoded() -> JsonDict:
    """Per-route config for routes that are not gRPC: neither the transcoder nor the REST face touches them."""
    return {
        _TRANSCODER: {"@type": _TYPE_PREFIX + "envoy.config.route.v3.FilterConfig", "disabled": True},
        _LUA: {"@type": _TYPE_PREFIX + "envoy.extensions.filters.http.lua.v3.LuaPerRoute", "disabled": True},
    }


def _hide_grpc_headers() -> JsonDict:
    return {
        "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
        "mutations": {"response_mutations": [{"remove_on_match": {"key_matcher": {"prefix": "grpc-"}}}]},
    }


def _cors_policy(origins: tuple[str, ...]) -> JsonDict:
    return {
        "@type": _TYPE_PREFIX + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in origins],
        "allow_methods": CORS_ALLOW_METHODS,
        "allow_headers": CORS_ALLOW_HEADERS,
        "expose_headers": CORS_EXPOSE_HEADERS,
        "max_age": str(CORS_MAX_AGE_SECONDS),
    }


def _headers(headers: dict[str, str]) -> list[JsonDict]:
    return [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in headers.items()
    ]


# --- local replies ------------------------------------------------------------------------------


def _local_reply_config() -> JsonDict:
    """Envoy's own replies (404, 400, 413, 429, 503, ...) as the guide's ErrorResponse JSON, with the security
    headers (codec-level replies never see the route's headers).

    Local replies only: upstream errors are converted by the transcoder, then by the REST face (gateway/
    restface.lua), which leaves bodies already in the guide's shape alone. Each mapper skips native gRPC
    requests, for which Envoy would put the JSON text into grpc-message.
    """
    # A 400 after the transcoder rewrote the request (it sets x-envoy-original-path) is about the JSON body;
    # other 400s are about the path or query.
    body_error = {"and_filter": {"filters": [_status_is(400), _was_transcoded()]}}
    own_reply = {
        "metadata_filter": {
            "matcher": {
                "filter": restface.METADATA_NAMESPACE,
                "path": [{"key": "own_reply"}],
                "value": {"bool_match": True},
            },
            # The default (true) would match every reply without the key, i.e. all of Envoy's own.
            "match_if_key_not_found": False,
        }
    }
    mappers = [
        # The REST face's own 400s and 422s are in the guide's shape already: only the headers are added.
        {"filter": own_reply, "headers_to_add": _headers(SECURITY_HEADERS | API_HEADERS)},
        _mapper(_local_rest_reply(421), _guide_error(400, "INVALID_HOST", "Invalid host header"), status=400),
        _mapper(body_error, _guide_error(400, field="body")),
    ]
    mappers += [
        _mapper(
            _local_rest_reply(status), _guide_error(status, message=UPSTREAM_TROUBLE.get(status, "%LOCAL_REPLY_BODY%"))
        )
        for status in sorted(restface.HTTP_ERRORS)
    ]
    # Any other error status: still the guide's body, never Envoy's plain text.
    other_errors = {"and_filter": {"filters": [_status_at_least(400), _is_rest_request()]}}
    mappers.append(_mapper(other_errors, _guide_error(None)))
    return {"mappers": mappers}


def _mapper(filter_: JsonDict, body: JsonDict, *, status: int | None = None) -> JsonDict:
    mapper: JsonDict = {
        "filter": filter_,
        "body_format_override": {"json_format": body},
        "headers_to_add": _headers(SECURITY_HEADERS | API_HEADERS),
    }
    if status is not None:
        mapper["status_code"] = status
    return mapper


def _local_rest_reply(status: int) -> JsonDict:
    return {"and_filter": {"filters": [_status_is(status), _is_rest_request()]}}


def _status_is(status: int) -> JsonDict:
    comparison = {
        "op": "EQ",
        "value": {"default_value": status, "runtime_key": f"gateway.local_reply.{status}"},
    }
    return {"status_code_filter": {"comparison": comparison}}


def _status_at_least(status: int) -> JsonDict:
    comparison = {"op": "GE", "value": {"default_value": status, "runtime_key": f"gateway.local_reply.ge.{status}"}}
    return {"status_code_filter": {"comparison": comparison}}


def _was_transcoded() -> JsonDict:
    return {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}}


def _is_rest_request() -> JsonDict:
    # The transcoder rewrites a REST request's content-type to application/grpc before it reads the body, so
    # "not gRPC" alone would miss malformed-JSON replies; it also records the REST path in
    # x-envoy-original-path, which tells the two apart.
    return {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
                _was_transcoded(),
            ]
        }
    }


def _guide_error(
    status: int | None, error: str | None = None, message: str = "%LOCAL_REPLY_BODY%", *, field: str | None = None
) -> JsonDict:
    """The guide's ErrorResponse as a local reply body; `detail` is FastAPI's name for the same text."""
    details: JsonDict = {}
    if field is None and status == 400:
        field = "request"  # a bad path or query: Envoy's text names the part
    if field is not None:
        details["field_violations"] = [{"field": field, "description": "%LOCAL_REPLY_BODY%"}]
    return {
        "error": error or restface.HTTP_ERRORS.get(status or 0, "ERROR"),
        "message": message,
        "detail": message,
        "details": details,
        "timestamp": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }


# --- clusters -----------------------------------------------------------------------------------


def _grpc_cluster(options: GatewayOptions) -> JsonDict:
    cluster = _cluster(GRPC_CLUSTER, options.grpc_host, options.grpc_port)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _TYPE_PREFIX + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "5s",
            # The default 60 s would leave a restarted service marked down for a minute while idle.
            "no_traffic_interval": "1s",
            "unhealthy_interval": "1s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            # The service's "liveness" name (service/server.py): NOT_SERVING only from the start of a shutdown.
            # "" also goes NOT_SERVING while the database is out; checked here, Envoy would then answer every REST
            # call itself ("no healthy upstream"), and clients would lose the service's own UNAVAILABLE with its
            # reason and retry delay, and GET /health its report. Readiness probes read "" and /health instead.
            "grpc_health_check": {"service_name": UPSTREAM_HEALTH_NAME},
        }
    ]
    # Without this, Envoy "panics" and sends traffic to its only host even when that host is unhealthy.
    cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    if options.upstream_tls:
        # Health checks use the cluster's transport socket, so they are checked over the same TLS.
        cluster["transport_socket"] = _upstream_tls(options)
    return cluster


def _upstream_tls(options: GatewayOptions, alpn: str = "h2") -> JsonDict:
    name = options.upstream_server_name
    common: JsonDict = {
        # grpc servers negotiate HTTP/2 by ALPN; the live endpoint speaks HTTP/1.1.
        "alpn_protocols": [alpn],
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "validation_context": {
            "trusted_ca": {"filename": str(options.upstream_ca_file)},
            # Without a name to match, any certificate the CA ever issued would do.
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if _is_ip(name) else "DNS", "matcher": {"exact": name}}
            ],
        },
    }
    if options.upstream_cert_file is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(options.upstream_cert_file)},
                "private_key": {"filename": str(options.upstream_key_file)},
            }
        ]
    context: JsonDict = {
        "@type": _TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    if not _is_ip(name):
        context["sni"] = name  # SNI carries host names only (RFC 6066)
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _metrics_cluster(options: GatewayOptions) -> JsonDict:
    return _cluster(METRICS_CLUSTER, options.metrics_host, options.metrics_port)


def _live_cluster(options: GatewayOptions) -> JsonDict:
    # HTTP/1.1 (Envoy's default upstream protocol): WebSocket upgrades need it. Over the same TLS as gRPC, when on.
    cluster = _cluster(LIVE_CLUSTER, options.live_host, options.live_port)
    if options.upstream_tls:
        cluster["transport_socket"] = _upstream_tls(options, alpn="http/1.1")
    return cluster


def _cluster(name: str, host: str, port: int) -> JsonDict:
    return {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}],
        },
    }


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _socket_address(host: str, port: int) -> JsonDict:
    return {"socket_address": {"address": host, "port_value": port}}


# --- checks -------------------------------------------------------------------------------------


def _check_port(name: str, port: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{name} must be in {low}..65535, not {port}")


def _check_ip(name: str, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{name} must be an IP address, not {host!r}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

"""The one typed settings object: built once in `main` from flags and ORCHESTRATOR_* variables, passed down.

Long because every setting lives here, each with its validation and description (the README and the CLI's
--help are made from them); it has one job."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator import tls
from orchestrator.agents.settings import AgentSettings

# The version of the workflow code's durable protocol (event keys, step order). DBOS only recovers or dequeues
# work recorded under the running application version, so it is pinned here rather than derived from a hash of
# the source: a code upgrade must not strand queued or running work. Bump it only with a migration plan.
WORKFLOW_PROTOCOL_VERSION = "1"


class AuthSettings(BaseModel):
    """Bearer-JWT authentication of every RPC but health (ORCHESTRATOR_AUTH__*). On by default; there is no
    default key, so a service with auth on and no key refuses to start."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    enabled: bool = Field(default=True, description="Require a bearer JWT; false is for local use only.")
    hs256_secret: SecretStr | None = Field(default=None, description="Shared secret for HS256 tokens (32+ bytes).")
    jwks_file: Path | None = Field(default=None, description="JWKS file with the RS256/ES256 public keys.")
    jwks_url: str | None = Field(default=None, description="https:// (or http://) URL of the RS256/ES256 JWKS.")
    jwks_cache_seconds: float = Field(default=300.0, gt=0, description="How long fetched or read JWKS keys are used.")
    issuer: str | None = Field(default=None, description="Required `iss` of every token.")
    audience: str | None = Field(default=None, description="Required `aud` of every token.")
    clock_skew_seconds: float = Field(default=30.0, ge=0, le=300, description="Leeway on exp, nbf and iat.")
    tenant_claim: str = Field(default="sub", min_length=1, description="Claim naming the tenant a token acts for.")
    scope_claims: tuple[str, ...] = Field(
        default=("scope", "scp"),
        min_length=1,
        description="Claims holding scopes or roles (space-separated or a list).",
    )
    read_scope: str = Field(default="workflows:read", min_length=1, description="Scope for status, watch and lists.")
    write_scope: str = Field(default="workflows:write", min_length=1, description="Scope for submit and cancel.")
    metrics_token: SecretStr | None = Field(default=None, description="Bearer token for /metrics; unset: open.")

    @field_validator("hs256_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits).
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (RFC 7518 requires a 256-bit key for HS256)")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url_shape(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError("must be an https:// or http:// URL")
        return value

    @field_validator("jwks_file")
    @classmethod
    def _jwks_file_readable(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        try:
            document = json.loads(value.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        except ValueError:
            raise ValueError(f"{value} is not JSON") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list) or not any(isinstance(k, dict) and k.get("kty") in ("RSA", "EC") for k in keys):
            raise ValueError(f'{value} is not a JWKS with an RSA or EC public key ({{"keys": [...]}})')
        return value

    @model_validator(mode="after")
    def _one_jwks_source(self) -> AuthSettings:
        if self.jwks_file is not None and self.jwks_url is not None:
            raise ValueError("set jwks_file or jwks_url, not both")
        if self.read_scope == self.write_scope:
            raise ValueError("read_scope and write_scope must differ")
        return self


class TlsSettings(BaseModel):
    """TLS on the gRPC port (ORCHESTRATOR_TLS__*): off until cert_file and key_file are set. With client_ca_file
    set, every client must present a certificate issued by that CA (mutual TLS), the Envoy sidecar included.
    Every file is read and checked when the settings are built, so a wrong one stops the start with its name."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    cert_file: Path | None = Field(default=None, description="PEM certificate chain of the gRPC server, leaf first.")
    key_file: Path | None = Field(default=None, description="PEM private key of cert_file (unencrypted).")
    client_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle of client certificates; set, every client needs one (mutual TLS)."
    )
    ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that issued cert_file; the Envoy sidecar verifies the service with it."
    )
    envoy_cert_file: Path | None = Field(
        default=None, description="PEM certificate the Envoy sidecar presents to the service (for mutual TLS)."
    )
    envoy_key_file: Path | None = Field(default=None, description="PEM private key of envoy_cert_file.")
    server_name: str = Field(
        default="localhost",
        min_length=1,
        max_length=253,
        description="Name the Envoy sidecar expects in the service's certificate (and sends as SNI).",
    )

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @model_validator(mode="after")
    def _files_fit(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set cert_file and key_file together (ORCHESTRATOR_TLS__CERT_FILE, ..._KEY_FILE)")
        if (self.envoy_cert_file is None) != (self.envoy_key_file is None):
            raise ValueError("set envoy_cert_file and envoy_key_file together")
        if self.cert_file is None or self.key_file is None:
            extra = [n for n in ("client_ca_file", "ca_file", "envoy_cert_file") if getattr(self, n) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} need TLS on: set cert_file and key_file too")
            return self
        try:
            setting = "cert_file"
            chain = tls.check_pair(self.cert_file, self.key_file)
            setting = "client_ca_file"
            client_cas = tls.certificates(self.client_ca_file) if self.client_ca_file else []
            setting = "ca_file"
            if self.ca_file is not None and not tls.issued_by(chain, tls.certificates(self.ca_file)):
                raise ValueError(f"the certificate in cert_file ({self.cert_file}) was not issued by a CA in it")
            setting = "envoy_cert_file"
            if self.envoy_cert_file is not None and self.envoy_key_file is not None:
                envoy_chain = tls.check_pair(self.envoy_cert_file, self.envoy_key_file)
                if client_cas and not tls.issued_by(envoy_chain, client_cas):
                    raise ValueError(
                        f"the certificate in {self.envoy_cert_file} was not issued by a CA in client_ca_file, "
                        "so the service would refuse the Envoy sidecar"
                    )
        except ValueError as exc:
            raise ValueError(f"{setting}: {exc}") from None
        return self


# A host name, an IPv4 address or a bracketed IPv6 address, with an optional port; "*.example.com" for every
# subdomain. Envoy matches these against the Host header (its virtual host `domains`).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*(:\d{{1,5}})?$")
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _split_list(value: Any) -> Any:
    """A list setting from the environment or a flag: JSON (`["a", "b"]`) or comma-separated (`a,b`)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return value


def _check_host(host: str) -> str:
    if host == "*":
        return host
    if host.startswith("["):
        address, _, port = host[1:].partition("]")
        try:
            ok = ipaddress.ip_address(address).version == 6 and (not port or re.fullmatch(r":\d{1,5}", port))
        except ValueError:
            ok = False
    else:
        ok = bool(_HOST_RE.match(host)) and len(host) <= 260
    if not ok:
        raise ValueError(f"{host!r} is not a host name: use name, name:port, an IP address, [IPv6] or *.domain")
    return host.lower()


def _check_origin(origin: str) -> str:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise ValueError(f"a CORS origin looks like https://host[:port], not {origin!r}")
    return origin


class Settings(BaseSettings):
    """Every setting has a default that works on one machine, except secrets, which have none."""

    # Errors never echo inputs: a validation error must not print a secret it was given.
    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    # Where things listen. Everything binds to loopback unless told otherwise.
    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 picks one.")
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the /metrics and docs HTTP server binds to. Loopback by default, whatever `host` is: "
        "Prometheus scrapes through Envoy's /metrics (a sidecar shares the pod's loopback); set it only when "
        "Envoy runs on another host.",
    )
    http_port: int = Field(8080, ge=0, le=65535, description="REST port served by the Envoy sidecar.")
    live_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="HTTP/1.1 port of the live endpoint (WebSocket, REST watch) Envoy routes to; 0 picks one.",
    )
    # 0, not Envoy's customary 9901: a fixed default kept a second instance on the same host from starting. The
    # sidecar learns the chosen port from the file Envoy writes (--admin-address-path).
    envoy_admin_port: int = Field(
        0, ge=0, le=65535, description="Envoy admin port (loopback only); 0 picks a free one."
    )
    envoy: bool = Field(True, description="Run the Envoy sidecar as a child process of `orchestrator serve`.")
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_ALLOWED_HOSTS,
        min_length=1,
        description="Host names the REST port answers (name, name:port, *.domain, or * for any); others get 421.",
    )
    cors_allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Origins (https://host[:port]) whose browser pages may call the REST API; default none."
    )

    # Where things are kept.
    data_dir: Path = Field(Path("data"), description="Directory for the SQLite databases and Envoy's files.")
    database_url: str | None = Field(
        None,
        description="postgresql://... to run several replicas on one database; default: SQLite in data_dir.",
    )
    # SQLite's own default waits 5 s, DBOS's 30 s. A write lock held longer than this by another process (a backup,
    # a stuck tool) is an outage: the caller then gets UNAVAILABLE with a retry delay instead of waiting on.
    sqlite_busy_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="How long a SQLite write waits for another writer before failing (UNAVAILABLE)."
    )
    replica_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable identity of this replica; unique per process sharing a database.",
    )
    workflow_types_dir: Path | None = Field(
        None, description="Extra directory of workflow type YAML files, loaded after the built-in ones."
    )

    # The engine.
    max_running_workflows: int = Field(
        20, ge=1, description="Workflows running at once across all replicas (the queue's global limit)."
    )
    max_running_per_type: int | None = Field(
        None, ge=1, description="Workflows of one type running at once across all replicas; default: no own limit."
    )
    max_running_per_replica: int | None = Field(
        None, ge=1, description="Workflows one replica runs at once; default: the global limit."
    )
    queue_poll_seconds: float = Field(
        0.05, gt=0, le=5, description="How often the queue looks for work; bounds the start latency."
    )
    max_executor_threads: int = Field(32, ge=4, description="DBOS worker threads (it is unbounded by default).")
    watch_heartbeat_seconds: float = Field(15.0, gt=0, description="Heartbeat interval on an idle watch stream.")
    remote_poll_seconds: float = Field(
        0.2, gt=0, description="How often a watcher polls for events of a workflow running on another replica."
    )
    replica_heartbeat_seconds: float = Field(2.0, gt=0, description="How often a replica says it is alive.")
    replica_dead_after_seconds: float = Field(
        15.0, gt=0, description="Silence after which other replicas take over a replica's running workflows."
    )
    retention_hours: float = Field(
        24.0 * 30, gt=0, description="Finished sessions are kept this long, then purged with their events."
    )
    # A workflow waits out a database outage or a full disk instead of failing (orchestrator/retry.py); an hour
    # covers a failover or an operator freeing space, and past it the workflow fails saying why, never strands.
    database_retry_limit_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long a running workflow waits for an unavailable (or full) database before it fails.",
    )
    repair_interval_seconds: float = Field(
        30.0,
        gt=0,
        description="How often sessions whose durable workflow ended without a final event are found and finished.",
    )
    purge_interval_seconds: float = Field(600.0, gt=0, description="How often finished sessions are purged.")
    # A model-backed phase is one to a few model calls of tens of seconds each (the tester's fix loop more),
    # so a minute is the right order of magnitude; phase timeouts (600 s) are upper bounds, not estimates.
    nominal_phase_seconds: float = Field(
        60.0,
        gt=0,
        le=24 * 3600,
        description="Seconds per phase assumed for estimated_completion until a workflow type has finished runs.",
    )

    # Input limits.
    max_requirements_length: int = Field(50_000, ge=1, description="Longest accepted requirements text.")
    max_configuration_bytes: int = Field(64 * 1024, ge=2, description="Largest accepted configuration (JSON).")
    max_configuration_depth: int = Field(8, ge=1, description="Deepest accepted configuration nesting.")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest accepted gRPC request message; larger ones get RESOURCE_EXHAUSTED."
    )
    request_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long Envoy waits for a whole REST request (headers and body) before answering 408: an "
        "upload that trickles forever must not hold a connection. Streams are not cut: it ends with the request.",
    )

    # Per-tenant limits (per client address when auth is off), on each replica.
    write_rate_per_second: float = Field(
        2.0, gt=0, description="Submits and cancels per second per tenant (token bucket refill)."
    )
    write_burst: int = Field(20, ge=1, description="Submits and cancels a tenant may make at once.")
    read_rate_per_second: float = Field(
        50.0, gt=0, description="Status, watch and list calls per second per tenant (token bucket refill)."
    )
    read_burst: int = Field(100, ge=1, description="Reads a tenant may make at once.")
    max_active_workflows_per_tenant: int = Field(
        100, ge=1, description="Queued plus running workflows of one tenant, across all replicas."
    )
    max_watch_streams_per_tenant: int = Field(20, ge=1, description="Open WatchWorkflow streams per tenant.")
    max_health_watch_streams: int = Field(
        100,
        ge=1,
        description="Open grpc.health.v1 Watch streams on this replica, all callers together: health needs no "
        "token, so without a cap anyone could hold a stream (and its task) per connection.",
    )

    # TLS on the gRPC port: ORCHESTRATOR_TLS__CERT_FILE, ..._KEY_FILE, ..._CLIENT_CA_FILE (mutual TLS), ...
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS and mutual TLS on the gRPC port.")

    # Authentication: ORCHESTRATOR_AUTH__ENABLED, ORCHESTRATOR_AUTH__HS256_SECRET, ORCHESTRATOR_AUTH__JWKS_URL, ...
    auth: AuthSettings = Field(default_factory=AuthSettings, description="Bearer JWTs, tenants and scopes.")

    # Models: ORCHESTRATOR_AGENTS__DEFAULT_MODEL=openai:gpt-4o-mini, ORCHESTRATOR_AGENTS__OPENAI_BASE_URL=...,
    # ORCHESTRATOR_AGENTS__OPENAI_API_KEY=... (secrets have no defaults; see AgentSettings for every key).
    agents: AgentSettings = Field(default_factory=AgentSettings, description="Models, retries, prices, sandbox.")

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Child processes (Envoy, the sandbox) run elsewhere: a relative path must mean the directory it meant here.
        return value.expanduser().resolve()

    @field_validator("replica_id")
    @classmethod
    def _replica_id_shape(cls, value: str) -> str:
        if not value or len(value) > 100 or not all(c.isalnum() or c in "-_.:" for c in value):
            raise ValueError("replica_id must be 1-100 characters of letters, digits and -_.:")
        return value

    @field_validator("allowed_hosts", "cors_allowed_origins", mode="before")
    @classmethod
    def _list_from_text(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_check_host(host.strip()) for host in value))

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins_shape(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_check_origin(origin.strip()) for origin in value))

    @model_validator(mode="after")
    def _tls_fits_the_sidecar(self) -> Settings:
        tls_settings = self.tls
        if not (tls_settings.enabled and self.envoy):
            return self
        if tls_settings.ca_file is None:
            raise ValueError(
                "TLS is on and the Envoy sidecar runs: set ORCHESTRATOR_TLS__CA_FILE, the CA bundle the sidecar "
                "verifies the service's certificate with"
            )
        if tls_settings.mutual and tls_settings.envoy_cert_file is None:
            raise ValueError(
                "mutual TLS is on (ORCHESTRATOR_TLS__CLIENT_CA_FILE) and the Envoy sidecar runs: set "
                "ORCHESTRATOR_TLS__ENVOY_CERT_FILE and ..._ENVOY_KEY_FILE, the certificate it presents"
            )
        leaf = tls.certificates(tls_settings.cert_file)[0]  # type: ignore[arg-type]
        if not tls.matches(tls_settings.server_name, leaf):
            raise ValueError(
                f"the Envoy sidecar expects the name {tls_settings.server_name!r} (ORCHESTRATOR_TLS__SERVER_NAME) "
                f"in the service's certificate, which names only {', '.join(tls.names(leaf)) or 'nothing'} "
                "in its subjectAltName"
            )
        return self

    @model_validator(mode="after")
    def _limits_fit(self) -> Settings:
        if self.max_running_per_type and self.max_running_per_type > self.max_running_workflows:
            raise ValueError("max_running_per_type cannot exceed max_running_workflows")
        if self.max_running_per_replica and self.max_running_per_replica > self.max_running_workflows:
            raise ValueError("max_running_per_replica cannot exceed max_running_workflows")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("database_url must be a postgresql:// URL (SQLite is the default without one)")
        auth = self.auth
        if auth.enabled and auth.hs256_secret is None and auth.jwks_file is None and auth.jwks_url is None:
            raise ValueError(
                "authentication is on but no key is configured: set ORCHESTRATOR_AUTH__HS256_SECRET, "
                "ORCHESTRATOR_AUTH__JWKS_FILE or ORCHESTRATOR_AUTH__JWKS_URL (or, for local use only, "
                "ORCHESTRATOR_AUTH__ENABLED=false)"
            )
        if auth.enabled and not (auth.issuer and auth.audience):
            raise ValueError(
                "authentication is on: set ORCHESTRATOR_AUTH__ISSUER and ORCHESTRATOR_AUTH__AUDIENCE, "
                "which every token must carry"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url is None

    def store_url(self) -> str:
        """The database of sessions and events (ours)."""
        if self.database_url:
            return _psycopg(self.database_url)
        return f"sqlite:///{self.data_dir / 'orchestrator.sqlite'}"

    def dbos_url(self) -> str:
        """DBOS's system database: its own SQLite file on one machine, the same PostgreSQL beyond it."""
        if self.database_url:
            return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        return f"sqlite:///{self.data_dir / 'dbos.sqlite'}"


def _psycopg(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url

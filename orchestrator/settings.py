"""The one typed settings object: built once in `main` from flags and ORCHESTRATOR_* variables, passed down."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.agents.settings import AgentSettings

# The version of the workflow code's durable protocol (event keys, step order). DBOS only recovers or dequeues
# work recorded under the running application version, so it is pinned here rather than derived from a hash of
# the source: a code upgrade must not strand queued or running work. Bump it only with a migration plan.
WORKFLOW_PROTOCOL_VERSION = "1"


class Settings(BaseSettings):
    """Every setting has a default that works on one machine, except secrets, which have none."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", env_nested_delimiter="__", extra="ignore")

    # Where things listen. Everything binds to loopback unless told otherwise.
    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 picks one.")
    http_port: int = Field(8080, ge=0, le=65535, description="REST port served by the Envoy sidecar.")
    envoy_admin_port: int = Field(9901, ge=0, le=65535, description="Envoy admin port (loopback only).")
    envoy: bool = Field(True, description="Run the Envoy sidecar as a child process of `orchestrator serve`.")

    # Where things are kept.
    data_dir: Path = Field(Path("data"), description="Directory for the SQLite databases and Envoy's files.")
    database_url: str | None = Field(
        None,
        description="postgresql://... to run several replicas on one database; default: SQLite in data_dir.",
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
    purge_interval_seconds: float = Field(600.0, gt=0, description="How often finished sessions are purged.")

    # Input limits.
    max_requirements_length: int = Field(50_000, ge=1, description="Longest accepted requirements text.")
    max_configuration_bytes: int = Field(64 * 1024, ge=2, description="Largest accepted configuration (JSON).")
    max_configuration_depth: int = Field(8, ge=1, description="Deepest accepted configuration nesting.")

    # Models: ORCHESTRATOR_AGENTS__DEFAULT_MODEL=openai:gpt-4o-mini, ORCHESTRATOR_AGENTS__OPENAI_BASE_URL=...,
    # ORCHESTRATOR_AGENTS__OPENAI_API_KEY=... (secrets have no defaults; see AgentSettings for every key).
    agents: AgentSettings = Field(default_factory=AgentSettings, description="Models, retries, prices, sandbox.")

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("replica_id")
    @classmethod
    def _replica_id_shape(cls, value: str) -> str:
        if not value or len(value) > 100 or not all(c.isalnum() or c in "-_.:" for c in value):
            raise ValueError("replica_id must be 1-100 characters of letters, digits and -_.:")
        return value

    @model_validator(mode="after")
    def _limits_fit(self) -> Settings:
        if self.max_running_per_type and self.max_running_per_type > self.max_running_workflows:
            raise ValueError("max_running_per_type cannot exceed max_running_workflows")
        if self.max_running_per_replica and self.max_running_per_replica > self.max_running_workflows:
            raise ValueError("max_running_per_replica cannot exceed max_running_workflows")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("database_url must be a postgresql:// URL (SQLite is the default without one)")
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

"""Fixtures of the fault tests: a fresh PostgreSQL database, control of the local PostgreSQL cluster, a tmpfs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import postgres_url
from tests.faults.harness import PostgresControl, Tmpfs, can_mount_tmpfs, postgres_cluster


def _unavailable(reason: str, required_by: str) -> None:
    """Skips with the reason, or fails when CI requires the fault to be injectable (`required_by` is set)."""
    if os.environ.get(required_by):
        pytest.fail(f"{reason}, and {required_by} says this fault test must run")
    pytest.skip(reason)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    base = postgres_url()
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except Exception as exc:
        _unavailable(f"no PostgreSQL reachable at {base} ({exc})", "ORCHESTRATOR_REQUIRE_POSTGRES")
    name = f"orch_fault_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        # A fresh connection: the first may have died with an outage the test injected.
        with psycopg.connect(base, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_control() -> Iterator[PostgresControl]:
    """Stops and starts the local cluster; whatever the test does, PostgreSQL is running when it ends."""
    cluster = postgres_cluster()
    if cluster is None:
        _unavailable("no local PostgreSQL cluster that pg_ctlcluster controls", "ORCHESTRATOR_REQUIRE_POSTGRES")
    if os.geteuid() != 0:
        _unavailable("stopping PostgreSQL with pg_ctlcluster needs root", "ORCHESTRATOR_REQUIRE_POSTGRES")
    assert cluster is not None
    control = PostgresControl(*cluster)
    control.ensure_running()
    try:
        yield control
    finally:
        control.ensure_running()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A real 128 MiB tmpfs (filled and freed by the test), unmounted afterwards."""
    reason = can_mount_tmpfs(tmp_path)
    if reason is not None:
        _unavailable(reason, "ORCHESTRATOR_REQUIRE_TMPFS")
    fs = Tmpfs(tmp_path / "small-disk", 128 * 1024 * 1024).mount()
    try:
        yield fs
    finally:
        fs.unmount()

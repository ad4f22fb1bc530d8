"""The larger fault runs whose numbers are in docs/reliability.md (the CI tests run the same code, smaller).

    python -m tests.faults.run outage [--workflows 500] [--outage-seconds 15] [--retry-limit 3600]
        [--phase-seconds 0.02]
    python -m tests.faults.run full-disk [--workflows 60] [--full-seconds 20]

`outage` stops the local PostgreSQL cluster (pg_ctlcluster; root) and always starts it again; `full-disk` mounts a
tmpfs (root) and always unmounts it. Each prints one JSON line of counts: completed, failed, stuck, lost,
duplicated, re-run, and how long the workflows took to finish after the fault ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import postgres_url
from tests.faults.harness import PostgresControl, Tmpfs, postgres_cluster
from tests.faults.test_database_outage import run_outage
from tests.faults.test_full_disk import run_full_disk


def _outage(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import psycopg

    cluster = postgres_cluster()
    if cluster is None:
        sys.exit("no local PostgreSQL cluster that pg_ctlcluster controls")
    control = PostgresControl(*cluster)
    control.ensure_running()
    base = postgres_url()
    name = f"orch_fault_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = base.rsplit("/", 1)[0] + f"/{name}"
        counts, summary, _ = asyncio.run(
            run_outage(
                tmp,
                url,
                control,
                args.workflows,
                args.outage_seconds,
                deadline=args.deadline,
                retry_limit=args.retry_limit,
                phase_seconds=args.phase_seconds,
            )
        )
    finally:
        control.ensure_running()
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(summary, file=sys.stderr)
    return counts


def _full_disk(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    disk = Tmpfs(tmp / "small-disk", args.disk_mib * 1024 * 1024).mount()
    try:
        counts, summary = asyncio.run(run_full_disk(tmp, disk, args.workflows, args.full_seconds, args.deadline))
    finally:
        disk.unmount()
    print(summary.splitlines()[0], file=sys.stderr)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    outage = sub.add_parser("outage", help="PostgreSQL stopped mid-run under many short workflows")
    outage.add_argument("--workflows", type=int, default=500)
    outage.add_argument("--outage-seconds", type=float, default=15.0)
    outage.add_argument("--retry-limit", type=float, default=3600.0, help="database_retry_limit_seconds")
    outage.add_argument("--phase-seconds", type=float, default=0.02, help="how long each scripted phase takes")
    outage.add_argument("--deadline", type=float, default=180.0, help="seconds to finish after the restart")
    full = sub.add_parser("full-disk", help="the SQLite data dir's tmpfs filled mid-run, then freed")
    full.add_argument("--workflows", type=int, default=60)
    full.add_argument("--full-seconds", type=float, default=20.0)
    full.add_argument("--disk-mib", type=int, default=512)
    full.add_argument("--deadline", type=float, default=180.0, help="seconds to finish after space returns")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orchestrator-faults-") as scratch:
        started = time.monotonic()
        counts = (_outage if args.scenario == "outage" else _full_disk)(args, Path(scratch))
        counts["run_seconds"] = round(time.monotonic() - started)
        print(json.dumps({"scenario": args.scenario, **vars(args), **counts}))


if __name__ == "__main__":
    main()

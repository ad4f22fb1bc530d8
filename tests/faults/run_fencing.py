"""Larger runs of the sandbox and takeover fault tests, whose numbers are in docs/reliability.md (the CI tests run
the same code, smaller).

    python -m tests.faults.run_fencing sandboxes [--sandboxes 20]
    python -m tests.faults.run_fencing pause [--workflows 40 --per-replica 10 --heartbeat 2 --dead-after 15]
    python -m tests.faults.run_fencing partition [same options as pause]
    python -m tests.faults.run_fencing outage-all [--outage-seconds 20 --heartbeat 2 --dead-after 15]
    python -m tests.faults.run_fencing kill-window [--kills 10 --workflows 20 --phase-seconds 0.2]

`sandboxes` needs root (namespaces) or unprivileged user namespaces; the others need the PostgreSQL of
ORCHESTRATOR_TEST_POSTGRES_URL (`kill-window` uses SQLite). None stops PostgreSQL: outages and partitions are a
proxy dropping the replicas' connections. Each prints one JSON line of counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.conftest import postgres_url
from tests.faults.harness import ServiceProcess, submit_all, tally, wait_finished
from tests.faults.test_sandbox_leftovers import run_sandboxes
from tests.faults.test_takeover import calls_log, run_outage_for_all, run_takeover


@contextmanager
def _database() -> Iterator[str]:
    import psycopg

    base = postgres_url()
    name = f"orch_fault_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_kill_window(tmp: Path, kills: int, workflows: int, phase_seconds: float) -> dict[str, Any]:
    """One SQLite replica runs `workflows` six-phase workflows and is killed with SIGKILL `kills` times at random
    moments, restarted each time. Counts the phases whose model call had RETURNED before a kill and started again
    after it (their result was lost: what the issue's "finished less than a second before the kill" means), and
    those that were mid-call at a kill (they run again by nature)."""
    calls = tmp / "calls.log"
    data = tmp / "data"
    service = ServiceProcess(tmp, "solo", calls, data_dir=data, delay=phase_seconds, max_running=workflows).start()
    try:
        async with service.channel() as channel:
            ids = await submit_all(pb_grpc.OrchestratorServiceStub(channel), workflows, "full")
        killed_pids = []
        for _ in range(kills):
            await asyncio.sleep(random.uniform(0.5, 6 * phase_seconds))  # a random moment: this IS the fault
            assert service.process is not None
            killed_pids.append(service.process.pid)
            service.process.send_signal(signal.SIGKILL)
            service.process.wait(10)
            service.start()
        async with service.channel() as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            final = await wait_finished(stub, ids, timeout=120 + workflows * phase_seconds)
            result = await tally(stub, ids, calls, final)
    finally:
        service.stop()
    rows = calls_log(calls)
    starts = Counter((s, p) for k, s, p, _, _ in rows if k == "start")
    finished_then_rerun = interrupted_then_rerun = 0
    incarnation = {pid: i for i, pid in enumerate(killed_pids)}  # the last process (never killed) comes after all
    for i, pid in enumerate(killed_pids):
        started = {(s, p) for k, s, p, q, _ in rows if k == "start" and q == pid}
        returned = {(s, p) for k, s, p, q, _ in rows if k == "done" and q == pid}
        # Started again by a later process (the restart after this kill, or one after it).
        later = [(s, p) for k, s, p, q, _ in rows if k == "start" and incarnation.get(q, len(killed_pids)) > i]
        again = started & set(later)
        finished_then_rerun += len(returned & again)
        interrupted_then_rerun += len((started - returned) & again)
    counts: dict[str, Any] = result.counts()
    counts.update(
        kills=kills,
        phase_calls=sum(starts.values()),
        phases=6 * workflows,
        finished_then_rerun=finished_then_rerun,
        interrupted_then_rerun=interrupted_then_rerun,
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True)
    boxes = sub.add_parser("sandboxes", help="kill -9 with sandboxed test runs going, then a restart")
    boxes.add_argument("--sandboxes", type=int, default=20)
    for name, text in (("pause", "SIGSTOP one of two replicas"), ("partition", "cut one replica off")):
        takeover = sub.add_parser(name, help=f"{text} past the dead-after threshold")
        takeover.add_argument("--workflows", type=int, default=40)
        takeover.add_argument("--per-replica", type=int, default=10)
        takeover.add_argument("--phase-seconds", type=float, default=4.0)
        takeover.add_argument("--model-calls", type=int, default=4)
        takeover.add_argument("--heartbeat", type=float, default=2.0)
        takeover.add_argument("--dead-after", type=float, default=15.0)
    outage = sub.add_parser("outage-all", help="the database out of reach of both replicas")
    outage.add_argument("--workflows", type=int, default=8)
    outage.add_argument("--per-replica", type=int, default=4)
    outage.add_argument("--phase-seconds", type=float, default=30.0)
    outage.add_argument("--model-calls", type=int, default=30)
    outage.add_argument("--outage-seconds", type=float, default=20.0)
    outage.add_argument("--heartbeat", type=float, default=2.0)
    outage.add_argument("--dead-after", type=float, default=15.0)
    window = sub.add_parser("kill-window", help="kill -9 one SQLite replica at random moments")
    window.add_argument("--kills", type=int, default=10)
    window.add_argument("--workflows", type=int, default=20)
    window.add_argument("--phase-seconds", type=float, default=0.2)
    args = parser.parse_args()
    options = {k: v for k, v in vars(args).items() if k != "scenario"}
    with tempfile.TemporaryDirectory(prefix="orchestrator-faults-") as scratch:
        tmp = Path(scratch)
        started = time.monotonic()
        if args.scenario == "sandboxes":
            counts = asyncio.run(run_sandboxes(tmp, args.sandboxes, give_up_after=60))
        elif args.scenario == "kill-window":
            counts = asyncio.run(run_kill_window(tmp, args.kills, args.workflows, args.phase_seconds))
        else:
            with _database() as url:
                if args.scenario == "outage-all":
                    counts = asyncio.run(run_outage_for_all(tmp, url, **options))
                else:
                    counts = asyncio.run(run_takeover(tmp, url, args.scenario, **options))
        print(counts.pop("summary", ""), file=sys.stderr)
        counts["run_seconds"] = round(time.monotonic() - started)
        print(json.dumps({"scenario": args.scenario, **options, **counts}))


if __name__ == "__main__":
    main()

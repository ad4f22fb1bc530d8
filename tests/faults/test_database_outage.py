"""A real PostgreSQL stopped for seconds under a real service process running many short workflows: every
workflow ends completed (or failed with a clear reason), none is stranded, lost, duplicated or re-run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.faults.harness import PostgresControl, ServiceProcess, Tally, states, submit_all, tally, wait_finished

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.slow]

# The CI size; `python -m tests.faults.run outage` runs the larger one whose numbers are in docs/reliability.md.
WORKFLOWS = 100
OUTAGE_SECONDS = 10.0


async def run_outage(
    tmp: Path,
    database_url: str,
    control: PostgresControl,
    workflows: int,
    outage_seconds: float,
    deadline: float,
    retry_limit: float = 3600.0,
    phase_seconds: float = 0.02,
) -> tuple[dict[str, int], str, Tally]:
    """Submits `workflows` six-phase workflows (phases of `phase_seconds`), stops PostgreSQL for `outage_seconds`
    once a fifth of them have completed, starts it again and waits up to `deadline` seconds for every one to
    finish. Returns the counts."""
    calls = tmp / "calls.log"
    settings = {
        "database_retry_limit_seconds": retry_limit,
        "repair_interval_seconds": 1.0,
        # One replica: nobody else may declare it dead while the database it reports to is down.
        "replica_dead_after_seconds": 60.0,
        "max_active_workflows_per_tenant": max(100, workflows),  # every workflow is submitted at once
    }
    service = ServiceProcess(
        tmp, "outage", calls, database_url=database_url, delay=phase_seconds, settings=settings
    ).start()
    try:
        async with service.channel() as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            ids = await submit_all(stub, workflows, "full")
            await _until_completed(stub, ids, workflows // 5, timeout=60)
            with control.outage():
                await asyncio.sleep(outage_seconds)  # the fault's length, not a wait for a condition
            restarted = time.monotonic()
            final = await wait_finished(stub, ids, timeout=deadline)
            elapsed = time.monotonic() - restarted
            result = await tally(stub, ids, calls, final)
            counts = result.counts()
            counts["seconds_to_finish_after_restart"] = round(elapsed)
            return counts, result.summary(), result
    finally:
        service.stop()


async def _until_completed(stub: pb_grpc.OrchestratorServiceStub, ids: list[str], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        current = await states(stub, ids)
        if sum(1 for s in current.values() if s and s.state == enums.WORKFLOW_STATE_COMPLETED) >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} workflows completed within {timeout}s before the outage")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(150)
async def test_postgres_outage_mid_run_strands_nothing(
    tmp_path: Path, pg_database: str, postgres_control: PostgresControl
) -> None:
    counts, summary, _ = await run_outage(
        tmp_path, pg_database, postgres_control, WORKFLOWS, OUTAGE_SECONDS, deadline=60
    )
    assert counts["stuck"] == 0, summary
    assert counts["lost"] == 0, summary
    assert counts["duplicated"] == 0, summary
    assert counts["re-run"] == 0, summary
    # The retry limit (an hour by default) is far longer than the outage: nothing needed to fail.
    assert counts["completed"] == WORKFLOWS, summary


@pytest.mark.timeout(150)
async def test_an_outage_longer_than_the_retry_limit_strands_nothing_either(
    tmp_path: Path, pg_database: str, postgres_control: PostgresControl
) -> None:
    """With a one-second limit, workflows that needed the store during the outage give up (in the runs measured,
    1 to 7 of 100; the others waited in DBOS's own retries or for the replica's lease, which have no limit), and
    the repair pass writes their failure once the database is back. test_store_outage.py pins the limit itself
    down deterministically."""
    counts, summary, result = await run_outage(
        tmp_path, pg_database, postgres_control, WORKFLOWS, OUTAGE_SECONDS, deadline=60, retry_limit=1.0
    )
    assert counts["stuck"] == counts["lost"] == counts["duplicated"] == counts["re-run"] == 0, summary
    assert counts["completed"] + counts["failed"] == WORKFLOWS, summary
    assert counts["phase_failed"] == 0, summary
    assert all(
        m.startswith("the workflow stopped before it finished: ") and "database_retry_limit_seconds" in m
        for m in result.failed.values()
    ), summary

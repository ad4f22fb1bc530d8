"""A real small tmpfs holding the SQLite data dir, filled while workflows run and freed again: phases that finish
while the disk is full keep their results, no phase is reported failed or runs twice, every workflow completes,
and health says the database cannot take writes while it cannot."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.faults.harness import ServiceProcess, Tmpfs, phase_calls, states, submit_all, tally, wait_finished

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PHASES = 6  # the `full` workflow type
# The CI size; `python -m tests.faults.run full-disk` runs the larger one whose numbers are in docs/reliability.md.
WORKFLOWS = 12
FULL_SECONDS = 6.0
OUTPUT_BYTES = 64 * 1024


async def run_full_disk(
    tmp: Path, disk: Tmpfs, workflows: int, full_seconds: float, deadline: float
) -> tuple[dict[str, Any], str]:
    """Runs `workflows` six-phase workflows (0.3 s phases) with the data dir on `disk`, fills it once phases have
    finished and others run, keeps it full for `full_seconds`, frees it, and waits up to `deadline` seconds."""
    calls = tmp / "calls.log"
    service = ServiceProcess(
        tmp,
        "full-disk",
        calls,
        data_dir=disk.path / "data",
        delay=0.3,
        max_running=workflows,
        # Outputs the size of real generated code: recording them needs new database pages, which a full disk
        # refuses (tiny ones fit in pages SQLite already has, and would not show the fault).
        harness_args=["--output-bytes", str(OUTPUT_BYTES)],
    )
    service.start()
    seen: dict[str, Any] = {}
    try:
        async with service.channel() as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            ids = await submit_all(stub, workflows, "full")
            await _until(stub, ids, lambda s: sum(len(x.phases_completed) for x in s.values() if x) >= workflows, 60)
            disk.fill()
            done_at_fill = len(_done_lines(calls))
            seen["free_bytes_when_full"] = disk.free_bytes()
            try:
                seen["database_health_when_full"] = await _database_health_until(
                    stub, enums.SERVING_STATUS_NOT_SERVING, timeout=full_seconds + 10
                )
                await asyncio.sleep(full_seconds)  # the fault's length, not a wait for a condition
                seen["phases_finished_while_full"] = len(_done_lines(calls)) - done_at_fill
            finally:
                disk.free()
            freed = time.monotonic()
            final = await wait_finished(stub, ids, timeout=deadline)
            seen["seconds_to_finish_after_free"] = round(time.monotonic() - freed)
            seen["database_health_after"] = await _database_health_until(stub, enums.SERVING_STATUS_SERVING, timeout=10)
            result = await tally(stub, ids, calls, final)
            counts: dict[str, Any] = result.counts()
            counts["phase_calls"] = sum(phase_calls(calls).values())
            counts.update(seen)
            return counts, result.summary() + "\n" + service.log_tail(3000)
    finally:
        service.stop()


def _done_lines(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line.startswith("done ")] if calls.exists() else []


async def _until(stub: pb_grpc.OrchestratorServiceStub, ids: list[str], ok: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok(await states(stub, ids)):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def _database_health_until(stub: pb_grpc.OrchestratorServiceStub, wanted: int, timeout: float) -> str:
    """Polls the Health RPC until its `database` dependency has status `wanted`; returns its message."""
    deadline = time.monotonic() + timeout
    while True:
        report = await stub.Health(pb.HealthRequest(), timeout=10)
        database = next(d for d in report.dependencies if d.name == "database")
        if database.status == wanted:
            return f"{enums.ServingStatus.Name(database.status)}: {database.message}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"database health stayed {enums.ServingStatus.Name(database.status)} ({database.message})"
            )
        await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_a_full_disk_is_waited_out_and_no_phase_fails_or_runs_twice(tmp_path: Path, small_tmpfs: Tmpfs) -> None:
    counts, summary = await run_full_disk(tmp_path, small_tmpfs, WORKFLOWS, FULL_SECONDS, deadline=60)
    assert counts["free_bytes_when_full"] < 64 * 1024, summary
    assert "cannot take writes" in counts["database_health_when_full"], summary
    assert counts["phases_finished_while_full"] >= 1, summary  # the fault hit phases whose results had to be saved
    assert counts["completed"] == WORKFLOWS, summary
    assert counts["phase_failed"] == 0 and counts["failed"] == 0, summary
    assert counts["stuck"] == counts["lost"] == counts["duplicated"] == 0, summary
    # Each phase's model call ran exactly once: a result made while the disk was full was kept, not re-made.
    assert counts["re-run"] == 0 and counts["phase_calls"] == WORKFLOWS * PHASES, summary

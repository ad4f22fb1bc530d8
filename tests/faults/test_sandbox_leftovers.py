"""kill -9 of a real service process whose workflows are running sandboxed tests that sleep: the sandboxes die
with it within a second or two, and the restarted replica sweeps their temporary directories at start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.faults.harness import ServiceProcess, submit_all

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(120)]

SANDBOXES = 3


def _live(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child its reparented parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def sandbox_processes(runs: list[Path]) -> set[int]:
    """Live processes of these sandbox runs: every process in a run's session, and in its cgroup if it has one."""
    sessions: set[str] = set()
    pids: set[int] = set()
    for run in runs:
        with contextlib.suppress(OSError, ValueError):
            marker = json.loads((run / "sandbox-run.json").read_text())
            sessions.add(str(marker["session"]))
            if marker.get("cgroup"):
                procs = Path(marker["cgroup"]) / "cgroup.procs"
                with contextlib.suppress(OSError):
                    pids.update(int(pid) for pid in procs.read_text().split())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if stat[stat.rfind(")") + 2 :].split()[3] in sessions:
                    pids.add(int(entry.name))
    return {pid for pid in pids if _live(pid)}


def _remove_owner_cgroups(name: str) -> None:
    """The per-owner cgroups this test's service created (empty by now), so test runs leave nothing behind."""
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        for owner in Path(mount).glob(f"orchestrator-sandbox.{name}-*"):
            for child in owner.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                owner.rmdir()


async def run_sandboxes(tmp: Path, sandboxes: int = SANDBOXES, give_up_after: float = 5.0) -> dict[str, Any]:
    """Runs `sandboxes` workflows whose tester phase runs a real sandbox with a test sleeping a minute, kills the
    service with SIGKILL once every sandbox runs, waits (up to `give_up_after`) for their processes to end,
    restarts the service and looks for their directories. Returns what it saw."""
    work = tmp / "sandbox-work"
    service = ServiceProcess(
        tmp,
        "sandboxes",
        tmp / "calls.log",
        delay=0.05,
        max_running=max(20, sandboxes),
        settings={"agents": {"sandbox": {"work_dir": str(work), "max_processes": 64 * sandboxes}}},
        harness_args=["--sandbox-seconds", "60"],  # each tester phase runs a generated test that sleeps a minute
    ).start()
    counts: dict[str, Any] = {"sandboxes": sandboxes}
    try:
        async with service.channel() as channel:
            await submit_all(pb_grpc.OrchestratorServiceStub(channel), sandboxes, "implement")
        deadline = time.monotonic() + 60 + sandboxes
        while len(started := list(work.glob("*/run-*/project/started"))) < sandboxes:
            assert time.monotonic() < deadline, (
                f"{len(started)} of {sandboxes} sandboxes started:\n{service.log_tail()}"
            )
            await asyncio.sleep(0.1)
        runs = [path.parents[1] for path in started]
        counts["processes_before_kill"] = len(sandbox_processes(runs))

        assert service.process is not None
        service.process.kill()  # SIGKILL: no handler, no cleanup in the server
        service.process.wait(10)
        killed = time.monotonic()
        while remaining := sandbox_processes(runs):
            if time.monotonic() - killed > give_up_after:
                break
            await asyncio.sleep(0.05)
        counts["processes_left"] = len(remaining)
        counts["seconds_until_gone"] = None if remaining else round(time.monotonic() - killed, 2)
        counts["runs_left_after_kill"] = sum(run.exists() for run in runs)

        restart = time.monotonic()
        service.start()
        counts["restart_ready_seconds"] = round(time.monotonic() - restart, 1)
        counts["runs_left_after_restart"] = sum(run.exists() for run in runs)
    finally:
        service.stop()
        _remove_owner_cgroups("sandboxes")
    # The graceful stop of the restarted replica took its own (recovered) sandboxes along too.
    counts["runs_left_after_stop"] = len(list(work.glob("*/run-*")))
    return counts


async def test_kill_9_takes_its_sandboxes_along_and_the_restart_sweeps_their_files(tmp_path: Path) -> None:
    counts = await run_sandboxes(tmp_path)
    print(counts)
    assert counts["processes_before_kill"] >= SANDBOXES  # unshare and pytest of each, at least
    assert counts["processes_left"] == 0, f"sandbox processes outlived the server: {counts}"
    assert counts["runs_left_after_kill"] == SANDBOXES  # their files are left for the next start to sweep
    assert counts["runs_left_after_restart"] == 0, "the restarted replica did not sweep the old sandbox runs"
    assert counts["runs_left_after_stop"] == 0

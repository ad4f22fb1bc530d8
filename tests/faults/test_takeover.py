"""Replicas taken over, and phases that must not run (or finish) twice, with real service processes.

- Two replicas on PostgreSQL; B is paused (SIGSTOP) mid-phase, or cut off from the database (a TCP proxy drops
  its connections), past the dead-after threshold; A takes its workflows over. B, awake or reconnected, starts and
  finishes nothing of what A took, and makes no model call once its lease has lapsed.
- A database outage for BOTH replicas, twice the dead-after threshold: nobody is declared dead, nothing re-runs.
- A kill right after a phase saved its result (before the durable engine recorded the step): the restart returns
  the saved result instead of calling the model again.

The scripted model (tests/harness.py) logs each phase start, each model call and each return with its pid and
time, so every model call is counted. `python -m tests.faults.run_fencing` runs larger versions of the same code
(docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from tests.faults.harness import ServiceProcess, TcpProxy, postgres_ready, submit_all, tally, wait_finished

pytestmark = [pytest.mark.faults, pytest.mark.slow]

Row = tuple[str, str, str, int, float]


def calls_log(path: Path) -> list[Row]:
    """(kind, session, phase, pid, time) of every `start`, `model` and `done` line of the scripted model."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) >= 5 and parts[0] in ("start", "model", "done"):
            rows.append((parts[0], parts[1], parts[2], int(parts[3]), float(parts[4])))
    return rows


def samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric(port: int, name: str) -> float:
    """The sum of a counter's samples on a replica's /metrics."""
    return sum(value for _, value in samples(port, name))


async def postgres_up() -> None:
    """The engine's fault tests stop the shared PostgreSQL at times: wait (bounded) until it answers."""
    deadline = time.monotonic() + 60
    while not postgres_ready():
        if time.monotonic() > deadline:
            pytest.skip("PostgreSQL did not become ready")
        await asyncio.sleep(0.5)


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def _replicas(
    tmp: Path,
    calls: Path,
    url_a: str,
    url_b: str,
    *,
    per_replica: int,
    phase_seconds: float,
    model_calls: int,
    heartbeat: float,
    dead_after: float,
) -> tuple[ServiceProcess, ServiceProcess]:
    settings = {
        "max_running_per_replica": per_replica,
        "replica_heartbeat_seconds": heartbeat,
        "replica_dead_after_seconds": dead_after,
    }
    common: dict[str, Any] = {
        "delay": phase_seconds,
        "settings": settings,
        "harness_args": ["--model-calls", str(model_calls)],
        "max_running": 2 * per_replica,
    }
    a = ServiceProcess(tmp, "replica-a", calls, database_url=url_a, **common).start()
    try:
        b = ServiceProcess(tmp, "replica-b", calls, database_url=url_b, **common).start()
    except BaseException:
        a.stop()
        raise
    return a, b


async def run_takeover(
    tmp: Path,
    database_url: str,
    fault: Literal["pause", "partition"],
    *,
    workflows: int = 6,
    per_replica: int = 3,
    phase_seconds: float = 2.0,
    model_calls: int = 4,
    heartbeat: float = 0.5,
    dead_after: float = 3.0,
) -> dict[str, Any]:
    """Two replicas share `workflows` two-phase workflows; once B runs two of them, B is paused (SIGSTOP) or cut
    off from the database until A has started again every phase B had in flight, then woken or reconnected; every
    workflow is waited for. Returns the client-side counts and what the takeover cost (see `check_takeover`)."""
    proxy = TcpProxy().start() if fault == "partition" else None
    calls = tmp / "calls.log"
    url_b = proxy.url(database_url) if proxy else database_url
    a, b = _replicas(
        tmp,
        calls,
        database_url,
        url_b,
        per_replica=per_replica,
        phase_seconds=phase_seconds,
        model_calls=model_calls,
        heartbeat=heartbeat,
        dead_after=dead_after,
    )
    assert a.process is not None and b.process is not None
    pid_a, pid_b = a.process.pid, b.process.pid
    try:
        async with a.channel() as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            ids = await submit_all(stub, workflows, "design")
            await until(
                lambda: len({s for k, s, _, pid, _ in calls_log(calls) if pid == pid_b and k == "model"}) >= 2,
                60,
                "replica B never ran two workflows",
            )
            if proxy is not None:
                proxy.cut()
            else:
                b.process.send_signal(signal.SIGSTOP)
            faulted = time.time()
            rows = calls_log(calls)
            in_flight = {(s, p) for k, s, p, pid, _ in rows if k == "start" and pid == pid_b} - {
                (s, p) for k, s, p, pid, _ in rows if k == "done" and pid == pid_b
            }
            # A declares B dead and runs what B was running: each phase B had in flight starts again on A.
            await until(
                lambda: in_flight <= {(s, p) for k, s, p, pid, _ in calls_log(calls) if k == "start" and pid == pid_a},
                6 * dead_after + 30,
                "replica A did not take over B's phases",
            )
            if proxy is not None:
                proxy.restore()
                # While cut off, B may work until its lease lapses (0.8 x dead-after after its last heartbeat, which
                # precedes the cut); a survivor cannot take anything over sooner than dead-after.
                since = faulted + 0.8 * dead_after + 0.3
            else:
                b.process.send_signal(signal.SIGCONT)
                since = time.time()
            fault_seconds = time.time() - faulted
            final = await wait_finished(stub, ids, timeout=90 + workflows * phase_seconds)
            result = await tally(stub, ids, calls, final)
        counts: dict[str, Any] = result.counts()
        counts.update(check_takeover(calls_log(calls), final, pid_a, pid_b, since))
        counts["in_flight_on_b"] = len(in_flight)
        counts["in_flight_rerun"] = len(in_flight & counts.pop("rerun_keys"))
        counts["reexecutions_metric"] = metric(a.metrics_port, "orchestrator_phase_reexecutions_total") + metric(
            b.metrics_port, "orchestrator_phase_reexecutions_total"
        )
        counts["taken_over_metric_b"] = metric(b.metrics_port, "orchestrator_replica_taken_over_total")
        counts["taken_over_metric_a"] = metric(a.metrics_port, "orchestrator_replica_taken_over_total")
        counts["fault_seconds"] = round(fault_seconds, 1)
        counts["summary"] = result.summary()
        return counts
    finally:
        if proxy is None and b.process.poll() is None:
            b.process.send_signal(signal.SIGCONT)
        a.stop()
        b.stop()
        if proxy is not None:
            proxy.stop()


def check_takeover(rows: list[Row], final: dict[str, Any], pid_a: int, pid_b: int, since: float) -> dict[str, Any]:
    """What a takeover of B by A cost, and whatever it must not: phases started twice (`rerun`), phases started more
    than twice or not first on B then on A (`rerun_out_of_order`), re-run phases that kept B's result although A
    re-ran them (`b_results_kept`), and B's model calls, starts and returns after `since` for workflows A ran
    (`late_on_b`)."""
    starts = Counter((s, p) for k, s, p, _, _ in rows if k == "start")
    rerun = {key for key, n in starts.items() if n > 1}
    order = {key: [pid for k, s, p, pid, _ in rows if k == "start" and (s, p) == key] for key in rerun}
    ran_on_a = {s for _, s, _, pid, _ in rows if pid == pid_a}
    late = [(k, s, p) for k, s, p, pid, t in rows if pid == pid_b and s in ran_on_a and t > since]
    return {
        "rerun": len(rerun),
        "rerun_keys": rerun,
        "rerun_out_of_order": sum(1 for pids in order.values() if pids != [pid_b, pid_a]),
        "b_results_kept": sum(1 for s, p in rerun if _kept_pid(final[s], p) == pid_b),
        "late_on_b": len(late),
        "late_on_b_model_calls": sum(1 for k, _, _ in late if k == "model"),
    }


def _kept_pid(status: Any, phase: str) -> int | None:
    """The pid in the phase's kept result (the scripted model's output), from a client's status."""
    if status is None or phase not in status.partial_results or "pid" not in status.partial_results[phase]:
        return None
    return int(status.partial_results[phase]["pid"])


def assert_takeover_cost_only(counts: dict[str, Any], workflows: int, per_replica: int) -> None:
    assert counts["completed"] == workflows, counts["summary"]
    assert counts["failed"] == counts["stuck"] == counts["lost"] == counts["duplicated"] == 0, counts["summary"]
    # Fenced before each model call and before saving: nothing of what A took ran on B afterwards.
    assert counts["late_on_b"] == 0, counts
    # Each phase B had in flight started again on A, once, and kept A's result. (A phase B had just finished but
    # not yet saved when the fault hit runs again too: at most one phase per workflow B ran.)
    assert counts["in_flight_on_b"] > 0
    assert counts["in_flight_rerun"] == counts["in_flight_on_b"] <= counts["rerun"] <= per_replica, counts
    assert counts["rerun_out_of_order"] == counts["b_results_kept"] == 0, counts
    # The metric counts each phase that started again: every second model call, and also a phase B had started
    # (its event written) but not yet called the model for; at most one per workflow B ran.
    assert counts["rerun"] <= counts["reexecutions_metric"] <= per_replica, counts
    assert counts["taken_over_metric_b"] == 1 and counts["taken_over_metric_a"] == 0, counts


@pytest.mark.postgres
@pytest.mark.timeout(150)
async def test_a_paused_replica_wakes_fenced_and_no_phase_finishes_twice(tmp_path: Path, pg_database: str) -> None:
    await postgres_up()
    counts = await run_takeover(tmp_path, pg_database, "pause")
    print({k: v for k, v in counts.items() if k != "summary"})
    assert_takeover_cost_only(counts, workflows=6, per_replica=3)


@pytest.mark.postgres
@pytest.mark.timeout(150)
async def test_a_replica_cut_off_from_the_database_stops_calling_the_model_once_its_lease_lapses(
    tmp_path: Path, pg_database: str
) -> None:
    await postgres_up()
    counts = await run_takeover(tmp_path, pg_database, "partition")
    print({k: v for k, v in counts.items() if k != "summary"})
    assert_takeover_cost_only(counts, workflows=6, per_replica=3)


async def run_outage_for_all(
    tmp: Path,
    database_url: str,
    *,
    workflows: int = 4,
    per_replica: int = 2,
    phase_seconds: float = 6.0,
    model_calls: int = 6,
    outage_seconds: float = 6.0,
    heartbeat: float = 0.5,
    dead_after: float = 3.0,
) -> dict[str, Any]:
    """Both replicas reach PostgreSQL through one proxy; once both run phases, the proxy drops every connection
    for `outage_seconds` (PostgreSQL itself keeps running for the other tests). Returns the counts, the phases
    that started twice and both replicas' takeover and re-execution metrics."""
    proxy = TcpProxy().start()
    calls = tmp / "calls.log"
    url = proxy.url(database_url)
    try:
        a, b = _replicas(
            tmp,
            calls,
            url,
            url,
            per_replica=per_replica,
            phase_seconds=phase_seconds,
            model_calls=model_calls,
            heartbeat=heartbeat,
            dead_after=dead_after,
        )
    except BaseException:
        proxy.stop()
        raise
    assert a.process is not None and b.process is not None
    try:
        async with a.channel() as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            ids = await submit_all(stub, workflows, "design")
            pids = {a.process.pid, b.process.pid}
            await until(
                lambda: {pid for k, _, _, pid, _ in calls_log(calls) if k == "model"} >= pids,
                60,
                "both replicas should be running phases",
            )
            proxy.cut()
            await asyncio.sleep(outage_seconds)  # the fault's length, not a wait for a condition
            proxy.restore()
            final = await _finished_through_outage(stub, ids, timeout=90 + workflows * phase_seconds)
            result = await tally(stub, ids, calls, final)
        counts: dict[str, Any] = result.counts()
        starts = Counter((s, p) for k, s, p, _, _ in calls_log(calls) if k == "start")
        counts["rerun"] = sum(1 for n in starts.values() if n > 1)
        counts["taken_over_metric"] = sum(
            metric(r.metrics_port, "orchestrator_replica_taken_over_total") for r in (a, b)
        )
        counts["reexecutions_metric"] = sum(
            metric(r.metrics_port, "orchestrator_phase_reexecutions_total") for r in (a, b)
        )
        counts["summary"] = result.summary()
        return counts
    finally:
        a.stop()
        b.stop()
        proxy.stop()


async def _finished_through_outage(stub: pb_grpc.OrchestratorServiceStub, ids: list[str], timeout: float) -> Any:
    """wait_finished, riding out UNAVAILABLE answers while the replica reconnects."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await wait_finished(stub, ids, timeout=max(1.0, deadline - time.monotonic()))
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_a_database_outage_for_every_replica_declares_none_dead(tmp_path: Path, pg_database: str) -> None:
    """PostgreSQL out of reach of both replicas for twice the dead-after threshold: afterwards neither was taken
    over, and nothing ran twice (before: the first survivor to reconnect declared the other dead)."""
    await postgres_up()
    counts = await run_outage_for_all(tmp_path, pg_database)
    print({k: v for k, v in counts.items() if k != "summary"})
    assert counts["completed"] == 4, counts["summary"]
    assert counts["rerun"] == counts["taken_over_metric"] == counts["reexecutions_metric"] == 0, counts


@pytest.mark.timeout(90)
async def test_a_kill_right_after_a_phase_saved_its_result_does_not_run_it_again(tmp_path: Path) -> None:
    """The narrowest window of the issue: the phase's model call finished and its result was saved (with its
    completion event), but the durable engine had not recorded the step when the process died. The restart
    returns the saved result instead of calling the model again, and the usage counts the phase once."""
    calls = tmp_path / "calls.log"
    data = tmp_path / "data"
    dying = ServiceProcess(
        tmp_path, "solo", calls, data_dir=data, delay=0.05, harness_args=["--kill-after-saving", "design"]
    ).start()
    async with dying.channel() as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        (session_id,) = await submit_all(stub, 1, "design")
    assert dying.process is not None
    assert dying.process.wait(30) == -signal.SIGKILL  # it killed itself right after saving phase `design`
    service = ServiceProcess(tmp_path, "solo", calls, data_dir=data, delay=0.05).start()
    try:
        async with service.channel() as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            final = await wait_finished(stub, [session_id], timeout=60)
            status = final[session_id]
            assert status.state == enums.WORKFLOW_STATE_COMPLETED
            starts = Counter(p for k, _, p, _, _ in calls_log(calls) if k == "start")
            assert starts == {"requirements": 1, "design": 1}, f"a phase ran twice: {starts}"
            assert status.usage.requests == 2  # one scripted request per phase, the saved one counted once
            completed = []
            async for event in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id), timeout=10):
                if event.type == enums.EVENT_TYPE_PHASE_COMPLETED:
                    completed.append(event.phase)
            assert completed == ["requirements", "design"]
            assert metric(service.metrics_port, "orchestrator_phase_reexecutions_total") == 0
    finally:
        service.stop()

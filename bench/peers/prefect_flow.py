"""The benchmark's 6-phase no-op workflow as a Prefect flow of six sequential tasks, each stamping when it
finished (as bench.server's model stamps done_at), after an optional per-task delay.

Loaded by path by `flow.serve()`'s runs, so it imports nothing from this project."""

from __future__ import annotations

import asyncio
import os
import time

from prefect import flow, task
from prefect.runtime import flow_run, task_run

PHASES = ["requirements", "design", "implementation", "tests", "review", "documentation"]


def _append(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


@task
async def phase(name: str, delay: float) -> float:
    if delay:
        await asyncio.sleep(delay)
    done_at = time.time()
    # The events run matches each task run's Completed event with this stamp; the kill -9 run counts phases
    # completed twice from the calls file. Both are unset otherwise.
    _append("BENCH_STAMPS_FILE", f"{task_run.id} {done_at}")
    _append("BENCH_CALLS_FILE", f"{flow_run.id} {name}")
    return done_at


@flow(name="bench-noop")
async def noop(delay: float = 0.0) -> list[float]:
    return [await phase.with_options(name=name)(name, delay) for name in PHASES]

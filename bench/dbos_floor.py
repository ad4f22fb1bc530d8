"""Bare DBOS running the same six instant steps per workflow, on the same SQLite settings: the floor the
engine's throughput is compared with.

    python -m bench.dbos_floor --data-dir D [--count 300] [--concurrency 20] [--database-url U]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from dbos import DBOS, SetEnqueueOptions, SetWorkflowID

from orchestrator.engine import _dbos_sqlite_engine

PHASES = 6


async def _phase(index: int) -> int:
    return index


# Completion is signalled in-process: DBOS's get_result polls the database and would measure its poll interval.
_done: dict[str, asyncio.Future[None]] = {}


@DBOS.workflow(name="bench.bare")
async def bare(count: int) -> int:
    for index in range(count):
        await DBOS.run_step_async({"name": f"phase{index}"}, _phase, index)
    future = _done.get(DBOS.workflow_id or "")
    if future is not None and not future.done():
        future.set_result(None)
    return count


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any work
    url = args.database_url or f"sqlite:///{Path(args.data_dir) / 'bare.sqlite'}"
    config = {
        "name": "bench-bare",
        "system_database_url": url,
        "application_version": "1",
        "max_executor_threads": 32,
        "log_level": "WARNING",
    }
    if url.startswith("sqlite"):
        config["system_database_engine"] = _dbos_sqlite_engine(url)
    DBOS(config=config)  # type: ignore[arg-type]
    DBOS.launch()
    await DBOS.register_queue_async("bare", worker_concurrency=args.concurrency, polling_interval_sec=0.05)
    await asyncio.sleep(1.2)  # the queue manager notices a newly registered queue within a second

    async def one(i: int) -> float:
        started = time.perf_counter()
        workflow_id = f"bare-{i}-{time.time_ns()}"
        finished = _done[workflow_id] = asyncio.get_running_loop().create_future()
        with SetWorkflowID(workflow_id), SetEnqueueOptions(priority=3):
            await DBOS.enqueue_workflow_async("bare", bare, PHASES)
        await finished
        del _done[workflow_id]
        return time.perf_counter() - started

    # Lone workflows first: the floor of submit -> completed.
    lone = sorted([await one(-i - 1) for i in range(10)])
    remaining = args.count
    began = time.perf_counter()

    async def slot() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one(remaining)

    await asyncio.gather(*(slot() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - began
    print(json.dumps({"per_second": args.count / elapsed, "lone_p50_ms": lone[len(lone) // 2] * 1000}), flush=True)
    DBOS.destroy()


if __name__ == "__main__":
    asyncio.run(main())

"""Load on Prefect's server, run with the Prefect venv's Python; PREFECT_API_URL points at the server.

    python -m bench.peers.prefect_load flows  --count N --concurrency C   in-process flow runs, submit -> done
    python -m bench.peers.prefect_load seed                               one finished flow run's id
    python -m bench.peers.prefect_load events [--delay S]                 task Completed -> subscriber has it
    python -m bench.peers.prefect_load serve  --limit L                   flow.serve(): the deployment's runner
    python -m bench.peers.prefect_load submit --count N [--delay S]       runs of that deployment, not waited for
    python -m bench.peers.prefect_load states --ids FILE --wait S [--until running|terminal]

Each prints one JSON object (serve prints nothing and runs until killed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.peers.common import deadline, emit, lag_stats, summary
from bench.peers.prefect_flow import PHASES, noop

DEPLOYMENT = "bench-noop/bench"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


async def flows(args: argparse.Namespace) -> dict[str, Any]:
    """`count` flow runs, `concurrency` at a time in this process (an async flow call runs it here and reports
    each state to the server, the fastest way the notes found); each is timed from the call to its return."""
    durations: list[float] = []
    failed = 0
    remaining = args.count

    async def slot() -> None:
        nonlocal remaining, failed
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                state = await noop(delay=args.delay, return_state=True)
                if not state.is_completed():
                    failed += 1
            except Exception:  # e.g. HTTP 503 "database is locked" from the server: counted, as ours are
                failed += 1
            durations.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(args.concurrency)))
    return summary(durations, time.perf_counter() - began, failed)


async def seed(args: argparse.Namespace) -> dict[str, Any]:
    state = await noop(return_state=True)
    return {"flow_run_id": str(state.state_details.flow_run_id)}


async def events(args: argparse.Namespace) -> dict[str, Any]:
    """Subscribes to the server's event stream (websocket /api/events/out), then runs one flow in a child
    process (the flow's executor, as the server process is ours); each task stamps when it finished."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    stamps = Path(tempfile.mkstemp(suffix=".stamps")[1])
    received: dict[str, float] = {}
    only_completed = EventFilter(event=EventNameFilter(name=["prefect.task-run.Completed"]))
    async with get_events_subscriber(filter=only_completed) as subscriber:
        since = time.time()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peers.prefect_load",
            "flows",
            "--count",
            "1",
            "--delay",
            str(args.delay),
            env={**os.environ, "BENCH_STAMPS_FILE": str(stamps)},
            stdout=asyncio.subprocess.DEVNULL,
        )

        async def listen() -> None:
            async for event in subscriber:
                if event.occurred.timestamp() >= since:  # the stream first replays recent events
                    received[event.resource.id.removeprefix("prefect.task-run.")] = time.time()
                if len(received) == len(PHASES):
                    return

        await asyncio.wait_for(asyncio.gather(listen(), child.wait()), timeout=args.timeout)
    done = dict(line.split() for line in stamps.read_text().splitlines())  # noqa: ASYNC240 - the child has exited
    stamps.unlink()  # noqa: ASYNC240
    return lag_stats([at - float(done[run]) for run, at in received.items() if run in done])


def serve(args: argparse.Namespace) -> dict[str, Any]:
    noop.serve(name="bench", limit=args.limit)
    return {}


async def submit(args: argparse.Namespace) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        until = deadline(60)
        while True:  # the runner registers the deployment when it starts
            try:
                deployment = await client.read_deployment_by_name(DEPLOYMENT)
                break
            except Exception:
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.5)
        ids = []
        for _ in range(args.count):
            run = await client.create_flow_run_from_deployment(deployment.id, parameters={"delay": args.delay})
            ids.append(str(run.id))
    return {"ids": ids}


async def states(args: argparse.Namespace) -> dict[str, Any]:
    """Each run's state type (404 -> "LOST"), polled until every run is terminal (or, with --until running, one
    is running), or `wait` seconds pass."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    ids = args.ids
    until = deadline(args.wait)
    async with get_client() as client:
        while True:
            found: dict[str, str] = {}
            for run_id in ids:
                try:
                    run = await client.read_flow_run(uuid.UUID(run_id))
                    found[run_id] = run.state.type.value if run.state else "NONE"
                except ObjectNotFound:
                    found[run_id] = "LOST"
            if args.until == "running":
                finished = any(s in ("RUNNING", *TERMINAL) for s in found.values())
            else:
                finished = all(s in TERMINAL or s == "LOST" for s in found.values())
            if finished or time.monotonic() > until:
                return {"states": dict(Counter(found.values()))}
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["flows", "seed", "events", "serve", "submit", "states"])
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--ids")
    parser.add_argument("--wait", type=float, default=0.0)
    parser.add_argument("--until", choices=["running", "terminal"], default="terminal")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    args.ids = json.loads(Path(args.ids).read_text()) if args.ids else []  # read here: blocking I/O
    if args.mode == "serve":
        serve(args)
        return
    handler = {"flows": flows, "seed": seed, "events": events, "submit": submit, "states": states}[args.mode]
    emit(asyncio.run(handler(args)))


if __name__ == "__main__":
    main()

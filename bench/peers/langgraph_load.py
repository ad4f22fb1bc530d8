"""Load on LangGraph's local Agent Server, run with the LangGraph venv's Python (needs only langgraph-sdk).

    python -m bench.peers.langgraph_load runs   --url U --count N --concurrency C [--delay S]
    python -m bench.peers.langgraph_load seed   --url U
    python -m bench.peers.langgraph_load stream --url U [--delay S]
    python -m bench.peers.langgraph_load submit --url U --count N [--delay S]
    python -m bench.peers.langgraph_load states --url U --ids FILE [--wait S] [--until running|terminal]

Each prints one JSON object. A workflow is one run of the `noop` graph on its own new thread, created by the
same request that starts the run (`if_not_exists="create"`), as ExecuteWorkflow creates a session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from langgraph_sdk import get_client

from bench.peers.common import deadline, emit, lag_stats, summary

GRAPH = "noop"
TERMINAL = {"success", "error", "timeout", "interrupted"}


async def runs(args: argparse.Namespace) -> dict[str, Any]:
    """`count` runs, `concurrency` at a time, each submit -> completed with runs.wait (the server's own join)."""
    client = get_client(url=args.url)
    durations: list[float] = []
    failed = 0
    remaining = args.count

    async def slot() -> None:
        nonlocal remaining, failed
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                result = await client.runs.wait(
                    str(uuid.uuid4()), GRAPH, input={"delay": args.delay}, if_not_exists="create"
                )
                if not isinstance(result, dict) or len(result.get("phases", [])) != 6:
                    failed += 1
            except Exception:  # a failed run is counted, as bench.load counts ours
                failed += 1
            durations.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(args.concurrency)))
    return summary(durations, time.perf_counter() - began, failed)


async def seed(args: argparse.Namespace) -> dict[str, Any]:
    """One finished run whose thread and run the status-read load then asks for."""
    client = get_client(url=args.url)
    thread = await client.threads.create()
    run = await client.runs.create(thread["thread_id"], GRAPH, input={})
    await client.runs.join(thread["thread_id"], run["run_id"])
    return {"thread_id": thread["thread_id"], "run_id": run["run_id"]}


async def stream(args: argparse.Namespace) -> dict[str, Any]:
    """One run streamed with stream_mode="updates": node finished (its done_at) -> the client has the update."""
    client = get_client(url=args.url)
    lags: list[float] = []
    async for part in client.runs.stream(
        str(uuid.uuid4()), GRAPH, input={"delay": args.delay}, stream_mode="updates", if_not_exists="create"
    ):
        received = time.time()
        if part.event == "updates":
            for update in part.data.values():
                if isinstance(update, dict) and "done_at" in update:
                    lags.append(received - update["done_at"])
    return lag_stats(lags)


async def submit(args: argparse.Namespace) -> dict[str, Any]:
    """`count` background runs, each on its own new thread, not waited for."""
    client = get_client(url=args.url)
    ids: list[list[str]] = []
    remaining = args.count

    async def slot() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            thread_id = str(uuid.uuid4())
            run = await client.runs.create(thread_id, GRAPH, input={"delay": args.delay}, if_not_exists="create")
            ids.append([thread_id, run["run_id"]])

    await asyncio.gather(*(slot() for _ in range(10)))
    return {"ids": ids}


async def states(args: argparse.Namespace) -> dict[str, Any]:
    """Each run's status (404 -> "lost"), polled until every run is finished or lost (or, with --until running,
    one has started), or `wait` seconds pass."""
    ids = args.ids
    until = deadline(args.wait)
    async with httpx.AsyncClient(base_url=args.url, timeout=10) as http:
        while True:
            found: dict[str, str] = {}
            for thread_id, run_id in ids:
                response = await http.get(f"/threads/{thread_id}/runs/{run_id}")
                found[run_id] = "lost" if response.status_code == 404 else response.json()["status"]
            if args.until == "running":
                finished = any(s != "pending" for s in found.values())
            else:
                finished = all(s in TERMINAL or s == "lost" for s in found.values())
            if finished or time.monotonic() > until:
                return {"states": dict(Counter(found.values()))}
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["runs", "seed", "stream", "submit", "states"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--ids")
    parser.add_argument("--wait", type=float, default=0.0)
    parser.add_argument("--until", choices=["running", "terminal"], default="terminal")
    args = parser.parse_args()
    args.ids = json.loads(Path(args.ids).read_text()) if args.ids else []  # read here: blocking I/O
    handler = {"runs": runs, "seed": seed, "stream": stream, "submit": submit, "states": states}[args.mode]
    emit(asyncio.run(handler(args)))


if __name__ == "__main__":
    main()

"""The service under benchmark, in its own process: the real App (engine, gRPC, Envoy) with a model that is
instant or takes a fixed time, so what is measured is the orchestrator, not a model.

    python -m bench.server --data-dir D [--delay S] [--database-url U] [--replica-id R] [--no-envoy]

Prints one JSON line with its ports when ready; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from orchestrator.agents import PhaseRequest, PhaseResult, PhaseUsage
from orchestrator.settings import Settings
from service import logs
from service.app import App


class BenchRunner:
    """A model that answers after `delay` seconds (0: at once) and stamps when it finished, so a watcher can
    measure phase finished -> event received on the same clock."""

    def __init__(self, delay: float, calls_file: str | None = None) -> None:
        self._delay = delay
        self._calls = os.open(calls_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if calls_file else None

    async def run(self, request: PhaseRequest) -> PhaseResult:
        if self._calls is not None:
            os.write(self._calls, f"{request.session_id} {request.phase}\n".encode())
        if self._delay:
            await asyncio.sleep(self._delay)
        output: dict[str, Any] = {"phase": request.phase, "done_at": time.time()}
        usage = PhaseUsage(input_tokens=1, output_tokens=1, requests=1, cost_usd=0.0, model="bench")
        return PhaseResult(output=output, usage=usage)

    def describe_model(self, configuration: dict[str, Any]) -> str:
        return "bench"

    async def check(self) -> tuple[bool, str]:
        return True, "bench model"


async def _lag_monitor(path: Path) -> None:
    """How late a 10 ms timer fires: the event loop's lag, sampled continuously, summarised each second."""
    with path.open("a") as out:
        while True:
            samples = []
            until = time.perf_counter() + 1
            while time.perf_counter() < until:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                samples.append(time.perf_counter() - before - 0.01)
            samples.sort()
            out.write(
                json.dumps({"p99_ms": samples[int(len(samples) * 0.99)] * 1000, "max_ms": samples[-1] * 1000}) + "\n"
            )
            out.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--database-url")
    parser.add_argument("--replica-id", default="bench-0")
    parser.add_argument("--max-running", type=int, default=20)
    parser.add_argument("--no-envoy", action="store_true")
    parser.add_argument("--calls-file", help="append one line per model call (kill -9 benchmark)")
    parser.add_argument("--lag-file", help="append event-loop lag samples, one JSON line a second")
    args = parser.parse_args()
    # The benchmark measures the orchestrator, so its protective limits are set far above the load it applies.
    settings = Settings(
        auth={"enabled": False},
        read_rate_per_second=1e6,
        read_burst=1_000_000,
        write_rate_per_second=1e6,
        write_burst=1_000_000,
        max_active_workflows_per_tenant=100_000,
        max_watch_streams_per_tenant=100_000,
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        replica_id=args.replica_id,
        grpc_port=0,
        metrics_port=0,
        http_port=0,
        envoy_admin_port=0,
        envoy=not args.no_envoy,
        max_running_workflows=args.max_running,
        log_level="WARNING",
        log_format="text",
    )
    logs.configure(settings.log_level, settings.log_format)
    app = App(settings, runner=BenchRunner(args.delay, args.calls_file))
    await app.start()
    if args.lag_file:
        asyncio.get_running_loop().create_task(_lag_monitor(Path(args.lag_file)))
    print(json.dumps({"grpc_port": app.grpc_port, "http_port": app.http_port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main())

"""A replica in its own process for crash and scale-out tests: the real App with a slow scripted model that
logs every call to a file, so a test can kill -9 it mid-phase and count what ran twice.

    python -m tests.harness --data-dir D --port-file F --calls-file C [--delay S] [--database-url U] [--replica-id R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from orchestrator.agents import PhaseRequest, PhaseResult
from orchestrator.agents.metering import PhaseUsage
from orchestrator.settings import Settings
from service import logs
from service.app import App


class LoggingRunner:
    def __init__(self, calls_file: Path, delay: float) -> None:
        self._fd = os.open(calls_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._delay = delay

    def _log(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())  # O_APPEND: one write per line stays whole

    async def run(self, request: PhaseRequest) -> PhaseResult:
        self._log(f"start {request.session_id} {request.phase} {os.getpid()}")
        await asyncio.sleep(self._delay)
        output: dict[str, Any] = {"phase": request.phase, "pid": os.getpid()}
        return PhaseResult(
            output=output, usage=PhaseUsage(input_tokens=1, output_tokens=1, requests=1, cost_usd=0.0, model="scripted")
        )

    def describe_model(self, configuration: dict[str, Any]) -> str:
        return "scripted"

    async def check(self) -> tuple[bool, str]:
        return True, "scripted"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--calls-file", required=True)
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--database-url")
    parser.add_argument("--replica-id", default="replica-a")
    parser.add_argument("--max-running", type=int, default=20)
    parser.add_argument("--per-replica", type=int)
    args = parser.parse_args()
    settings = Settings(
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        replica_id=args.replica_id,
        grpc_port=0,
        metrics_port=0,
        envoy=False,
        queue_poll_seconds=0.05,
        max_running_workflows=args.max_running,
        max_running_per_replica=args.per_replica,
        replica_heartbeat_seconds=0.5,
        replica_dead_after_seconds=3.0,
        remote_poll_seconds=0.1,
        log_format="text",
        log_level="WARNING",
        auth={"enabled": False},
        read_rate_per_second=10_000,
        read_burst=10_000,
        write_rate_per_second=10_000,
        write_burst=10_000,
    )
    logs.configure(settings.log_level, settings.log_format)
    app = App(settings, runner=LoggingRunner(Path(args.calls_file), args.delay))
    await app.start()
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(str(app.grpc_port))
    tmp.rename(args.port_file)  # atomic: the test never reads a half-written port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main())

"""A replica in its own process for crash and scale-out tests: the real App with a slow scripted model that
logs every call to a file, so a test can kill -9 it mid-phase and count what ran twice.

    python -m tests.harness --data-dir D --port-file F --calls-file C [--delay S] [--database-url U] [--replica-id R]
        [--set KEY=VALUE ...] [--model-calls N] [--sandbox-seconds S] [--kill-after-saving PHASE]

It writes its metrics port to PORT_FILE.metrics before it writes PORT_FILE.
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

from orchestrator import fencing
from orchestrator.agents import PhaseRequest, PhaseResult
from orchestrator.agents.metering import PhaseUsage
from orchestrator.sandbox import SandboxLimits, run_tests
from orchestrator.settings import Settings
from orchestrator.store import Store
from service import logs
from service.app import App, sandbox_limits


class LoggingRunner:
    """Logs `start` when a phase starts, `model` before each of its `model_calls` scripted model calls (checking,
    as the real runner does, that this replica still owns the workflow) and `done` when it returns. With
    `sandbox_seconds`, the tester's phase also runs a real sandbox whose generated test sleeps that long."""

    def __init__(
        self,
        calls_file: Path,
        delay: float,
        model_calls: int = 1,
        sandbox_seconds: float = 0.0,
        sandbox: SandboxLimits | None = None,
        output_bytes: int = 0,
    ) -> None:
        self._fd = os.open(calls_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._delay = delay
        self._model_calls = max(1, model_calls)
        self._sandbox_seconds = sandbox_seconds
        self._sandbox = sandbox or SandboxLimits()
        self._output_bytes = output_bytes

    def _log(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())  # O_APPEND: one write per line stays whole

    async def run(self, request: PhaseRequest) -> PhaseResult:
        where = f"{request.session_id} {request.phase} {os.getpid()}"
        self._log(f"start {where} {time.time():.3f}")
        for _ in range(self._model_calls):
            await fencing.before_model_call()
            self._log(f"model {where} {time.time():.3f}")
            await asyncio.sleep(self._delay / self._model_calls)
        if self._sandbox_seconds and request.role == "tester":
            body = (
                "import time\nfrom pathlib import Path\n\ndef test_sleeps():\n"
                f"    Path('started').write_text('yes')\n    time.sleep({self._sandbox_seconds})\n"
            )
            files = [{"path": "tests/test_sleeps.py", "content": body}]
            await run_tests(files, timeout_s=self._sandbox_seconds + 60, limits=self._sandbox)
        self._log(f"done {where} {time.time():.3f}")
        output: dict[str, Any] = {"phase": request.phase, "pid": os.getpid()}
        if self._output_bytes:  # the size of real generated code: its records need new pages, not freed ones
            output["text"] = "x" * self._output_bytes
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
    # Any other setting, as KEY=VALUE with a JSON value (or a plain string): fault tests tune retry limits and
    # repair intervals without a flag each.
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model-calls", type=int, default=1)
    parser.add_argument("--sandbox-seconds", type=float, default=0.0)
    parser.add_argument("--output-bytes", type=int, default=0, help="pad each phase's output to about this size")
    # Fault injection: SIGKILL this process right after it saved the result of this phase (the first time), before
    # the durable engine records the step: the narrowest window in which a finished phase could be lost.
    parser.add_argument("--kill-after-saving")
    args = parser.parse_args()
    if args.kill_after_saving:
        _kill_after_saving(args.kill_after_saving)
    extra: dict[str, Any] = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            extra[key] = json.loads(raw)
        except json.JSONDecodeError:
            extra[key] = raw
    values: dict[str, Any] = dict(
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
    settings = Settings(**{**values, **extra})
    logs.configure(settings.log_level, settings.log_format)
    runner = LoggingRunner(
        Path(args.calls_file),
        args.delay,
        args.model_calls,
        args.sandbox_seconds,
        sandbox_limits(settings),
        output_bytes=args.output_bytes,
    )
    app = App(settings, runner=runner)
    await app.start()
    Path(args.port_file + ".metrics").write_text(str(app.metrics_port))
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(str(app.grpc_port))
    tmp.rename(args.port_file)  # atomic: the test never reads a half-written port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.stop(grace=1)


def _kill_after_saving(phase: str) -> None:
    original = Store.append_many

    def append_many(self: Store, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        saved = kwargs.get("phase_usage")
        if saved is not None and saved[0] == phase and result[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Store.append_many = append_many  # type: ignore[method-assign]


if __name__ == "__main__":
    asyncio.run(main())

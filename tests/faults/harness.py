"""Shared fault-injection helpers: real service processes, a real PostgreSQL stopped and started, a real small
tmpfs filled and freed, and a tally of what a fault did to every submitted workflow.

Used by the fault tests under tests/faults/ and by `python -m tests.faults.run`, which runs the larger versions
whose numbers are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {enums.WORKFLOW_STATE_COMPLETED, enums.WORKFLOW_STATE_FAILED, enums.WORKFLOW_STATE_CANCELLED}
TERMINAL_EVENTS = {
    enums.EVENT_TYPE_WORKFLOW_COMPLETED,
    enums.EVENT_TYPE_WORKFLOW_FAILED,
    enums.EVENT_TYPE_WORKFLOW_CANCELLED,
}


# Service processes ---------------------------------------------------------------------------------------------


class ServiceProcess:
    """`python -m tests.harness` in its own process: the real App with a scripted model that logs every phase call
    to `calls` (one line per call, so re-runs can be counted), configured by `settings` (any Settings field)."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        calls: Path,
        *,
        data_dir: Path | None = None,
        database_url: str | None = None,
        delay: float = 0.0,
        max_running: int = 20,
        settings: dict[str, Any] | None = None,
        harness_args: list[str] | None = None,
    ) -> None:
        self.tmp, self.name, self.calls = tmp, name, calls
        self.data_dir = data_dir or tmp / f"data-{name}"
        self.database_url, self.delay, self.max_running = database_url, delay, max_running
        self.settings = settings or {}
        self.harness_args = harness_args or []  # more flags of tests/harness.py (--model-calls, --sandbox-seconds...)
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0
        self.log = tmp / f"{name}.log"

    def start(self, timeout: float = 60) -> ServiceProcess:
        port_file = self.tmp / f"{self.name}.port.{uuid.uuid4().hex}"
        args = [
            sys.executable, "-m", "tests.harness",
            "--data-dir", str(self.data_dir),
            "--port-file", str(port_file),
            "--calls-file", str(self.calls),
            "--delay", str(self.delay),
            "--replica-id", self.name,
            "--max-running", str(self.max_running),
        ]  # fmt: skip
        if self.database_url:
            args += ["--database-url", self.database_url]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        args += self.harness_args
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        metrics = Path(f"{port_file}.metrics")
        self.metrics_port = int(metrics.read_text()) if metrics.exists() else 0
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")


# PostgreSQL outages --------------------------------------------------------------------------------------------


def postgres_cluster() -> tuple[str, str] | None:
    """(version, name) of the local cluster pg_ctlcluster controls, or None when there is none."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted((p.name for p in Path("/etc/postgresql").iterdir() if (p / "main").is_dir()), key=_version_key)
    return (versions[-1], "main") if versions else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def postgres_ready(host: str = "127.0.0.1", port: int = 5432) -> bool:
    done = subprocess.run(
        ["pg_isready", "-q", "-h", host, "-p", str(port), "-t", "1"], capture_output=True, check=False, timeout=10
    )
    return done.returncode == 0


class PostgresControl:
    """Stops and starts the local PostgreSQL cluster. Only the engine's fault tests use it (other tests share the
    cluster); `start` always waits for pg_isready, and `ensure_running` is what every `finally` calls."""

    def __init__(self, version: str, cluster: str = "main") -> None:
        self.version, self.cluster = version, cluster

    def _ctl(self, action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.cluster, action, *(
                ["-m", "fast"] if action == "stop" else []
            )],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def stop(self) -> None:
        self._ctl("stop")

    def start(self, timeout: float = 60) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # "already running" is fine
            self._ctl("start")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not postgres_ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL {self.version}/{self.cluster} is not ready after {timeout:.0f}s")
            time.sleep(0.2)

    def ensure_running(self) -> None:
        if not postgres_ready():
            self.start()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """PostgreSQL is down inside the block and running again (pg_isready) after it, whatever happens."""
        self.stop()
        try:
            yield
        finally:
            self.start()


# A database outage for some processes only --------------------------------------------------------------------


class TcpProxy:
    """A TCP proxy on a loopback port in front of `host:port` (PostgreSQL), on an event loop in a thread of its own
    (the test's loop blocks at times, e.g. while a service process starts). `cut()` drops every connection through
    it and refuses new ones until `restore()`: a database outage for the processes that connect through it (or a
    partition, when only some do), while PostgreSQL itself, which other tests share, keeps running."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.host, self.upstream_port = host, port
        self.port = 0
        self.is_cut = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        scheme, rest = database_url.split("://", 1)
        credentials, _, location = rest.rpartition("@")
        path = location.split("/", 1)[1]
        return f"{scheme}://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    def _cut(self) -> None:
        self.is_cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    def cut(self) -> None:
        self._loop.call_soon_threadsafe(self._cut)

    def restore(self) -> None:
        self.is_cut = False

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.cut()
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# A small tmpfs -------------------------------------------------------------------------------------------------


class Tmpfs:
    """A real tmpfs of `size_bytes` mounted at `path` (needs root); `fill` takes all its free space with one file,
    `free` deletes it. Unmounted by `unmount`, which every `finally` calls."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path, self.size_bytes = path, size_bytes
        self.mounted = False
        self.filler = path / "filler.bin"

    def mount(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0700", "tmpfs", str(self.path)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.mounted = True
        return self

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self) -> None:
        """Writes until ENOSPC, in ever smaller writes: nothing else on the filesystem can grow afterwards."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1024 * 1024, 4096, 1):  # unbuffered: a buffered file would fail again on close
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True, timeout=30)
            self.mounted = False


def can_mount_tmpfs(scratch: Path) -> str | None:
    """None when a tmpfs can be mounted here, else why not (to skip with)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = Tmpfs(scratch / "probe-mount", 1024 * 1024)
    try:
        probe.mount()
    except (subprocess.CalledProcessError, OSError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        return f"mount -t tmpfs failed: {stderr.decode(errors='replace').strip() or exc}"
    finally:
        probe.unmount()
    return None


# Counting what a fault did -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Every submitted workflow's fate after a fault. `stuck`: not finished by the deadline; `lost`: the service
    does not know it; `duplicated`: its events have a gap, a repeat, or more than one terminal event (or a request
    made two sessions); `rerun`: phases whose model call ran more than once."""

    submitted: int = 0
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    stuck: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, str] = field(default_factory=dict)
    rerun: dict[tuple[str, str], int] = field(default_factory=dict)
    phase_failed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "submitted": self.submitted,
            "completed": len(self.completed),
            "failed": len(self.failed),
            "cancelled": len(self.cancelled),
            "stuck": len(self.stuck),
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "re-run": len(self.rerun),
            "phase_failed": len(self.phase_failed),
        }

    def summary(self) -> str:
        reasons = Counter(self.failed.values())
        return json.dumps(
            {
                "counts": self.counts(),
                "failure_reasons": dict(reasons.most_common(5)),
                "stuck": dict(list(self.stuck.items())[:5]),
                "duplicated": dict(list(self.duplicated.items())[:5]),
                "rerun": {f"{s[:8]}/{p}": n for (s, p), n in list(self.rerun.items())[:5]},
            },
            indent=None,
        )


def phase_calls(path: Path) -> Counter[tuple[str, str]]:
    """How often each (session, phase) model call started, from the scripted runner's log."""
    if not path.exists():
        return Counter()
    return Counter(
        (parts[1], parts[2])
        for parts in (line.split() for line in path.read_text().splitlines())
        if len(parts) >= 3 and parts[0] == "start"
    )


async def submit_all(
    stub: pb_grpc.OrchestratorServiceStub, count: int, workflow_type: str, prefix: str = "w"
) -> list[str]:
    """Submits `count` workflows with request ids, 20 at a time, retrying transient errors by request id (so a
    retry never makes a second session)."""
    ids: list[str] = [""] * count
    semaphore = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        request = pb.ExecuteWorkflowRequest(
            requirements=f"{prefix}{i}", workflow_type=workflow_type, request_id=f"{prefix}-{i}-{uuid.uuid4().hex[:8]}"
        )
        async with semaphore:
            for attempt in range(50):
                try:
                    ids[i] = (await stub.ExecuteWorkflow(request, timeout=30)).session_id
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL) or attempt == 49:
                        raise
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(one(i) for i in range(count)))
    return ids


async def states(stub: pb_grpc.OrchestratorServiceStub, ids: list[str]) -> dict[str, Any]:
    """Each session's status, or None when the service does not know it. Transient errors are retried."""
    semaphore = asyncio.Semaphore(32)

    async def one(session_id: str) -> Any:
        async with semaphore:
            for attempt in range(20):
                try:
                    return await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(session_id=session_id), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        return None
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.25)
            return None

    results = await asyncio.gather(*(one(s) for s in ids))
    return dict(zip(ids, results, strict=True))


async def wait_finished(stub: pb_grpc.OrchestratorServiceStub, ids: list[str], timeout: float) -> dict[str, Any]:
    """Polls until every session is terminal (or unknown), or the deadline passes; returns the last statuses."""
    deadline = time.monotonic() + timeout
    while True:
        current = await states(stub, ids)
        if all(s is None or s.state in TERMINAL for s in current.values()) or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.25)


async def events_of(stub: pb_grpc.OrchestratorServiceStub, session_id: str, timeout: float = 10) -> list[Any]:
    events = []
    call = stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=session_id), timeout=timeout)
    async for response in call:
        if response.type != enums.EVENT_TYPE_HEARTBEAT:
            events.append(response)
    return events


async def tally(
    stub: pb_grpc.OrchestratorServiceStub, ids: list[str], calls: Path, final: dict[str, Any] | None = None
) -> Tally:
    """Counts every session's fate from what a client sees (status and events) and the model-call log."""
    result = Tally(submitted=len(ids))
    final = final if final is not None else await states(stub, ids)
    if len(set(ids)) != len(ids):
        for session_id, n in Counter(ids).items():
            if n > 1:
                result.duplicated[session_id] = f"{n} requests share this session"
    semaphore = asyncio.Semaphore(16)

    async def check_events(session_id: str) -> None:
        async with semaphore:
            events = await events_of(stub, session_id)
        sequences = [e.sequence for e in events]
        terminal = [e for e in events if e.type in TERMINAL_EVENTS]
        if sequences != list(range(1, len(events) + 1)) or len(terminal) != 1:
            result.duplicated[session_id] = f"sequences {sequences[:3]}..{sequences[-3:]}, {len(terminal)} terminal"
        if any(e.type == enums.EVENT_TYPE_PHASE_FAILED for e in events):
            result.phase_failed.append(session_id)
        keys = Counter((e.type, e.phase) for e in events if e.type != enums.EVENT_TYPE_PHASE_STARTED)
        repeated = [k for k, n in keys.items() if n > 1]
        if repeated:
            result.duplicated[session_id] = f"events repeated: {repeated}"

    finished = []
    for session_id, status in final.items():
        if status is None:
            result.lost.append(session_id)
        elif status.state not in TERMINAL:
            result.stuck[session_id] = f"{enums.WorkflowState.Name(status.state)} at {status.progress}%"
        else:
            finished.append(session_id)
            if status.state == enums.WORKFLOW_STATE_COMPLETED:
                result.completed.append(session_id)
            elif status.state == enums.WORKFLOW_STATE_FAILED:
                result.failed[session_id] = status.error_details[-1].message if status.error_details else ""
            else:
                result.cancelled.append(session_id)
    await asyncio.gather(*(check_events(s) for s in finished))
    known = set(ids)
    result.rerun = {key: n for key, n in phase_calls(calls).items() if n > 1 and key[0] in known}
    return result

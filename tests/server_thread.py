"""The real App (with its Envoy sidecar) on an event loop of its own thread, for synchronous callers: schemathesis
and hypothesis (tests/service/test_fuzz.py), and clients that block, as the API Development Guide's tests and a
generated REST client do (tests/guide/, tests/clients/test_generated_client.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from orchestrator.agents import PhaseRequest, PhaseResult
from orchestrator.engine import PhaseRunnerLike
from orchestrator.settings import Settings
from service.app import App
from tests.runners import ScriptedRunner


class ServerThread:
    """`with ServerThread(settings) as server:` serves until the block ends. `runner` is the model stand-in
    (a ScriptedRunner unless given; pass `offline_model=True` for the real agents on the built-in offline model)."""

    def __init__(
        self, settings: Settings, runner: PhaseRunnerLike | None = None, *, offline_model: bool = False
    ) -> None:
        self.settings = settings
        self.app = App(settings, runner=None if offline_model else runner or ScriptedRunner())
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="server-thread", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the service did not start within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def base_url(self) -> str:
        """The REST port: the real Envoy in front of the service."""
        return f"http://127.0.0.1:{self.app.http_port}"

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.app.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await self.app.stop(grace=0.5)
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.app.stop(grace=1.0)

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        """Runs `coroutine` on the server's loop (for what must happen there) and returns its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)


class HeldRunner:
    """Wraps a runner so a test can see a workflow while it runs: a workflow submitted with the configuration key
    `HOLD` set to a phase name waits at the start of that phase until `release()` (or until it is cancelled).
    Other workflows pass straight through. The key is one a type does not document, so the service passes it on
    (with a warning), as it does any unknown key."""

    HOLD = "test_hold_phase"

    def __init__(self, inner: PhaseRunnerLike) -> None:
        self.inner = inner
        self._released = asyncio.Event()  # binds to the server's loop on first use

    async def run(self, request: PhaseRequest) -> PhaseResult:
        if request.configuration.get(self.HOLD) == request.phase:
            await self._released.wait()
        return await self.inner.run(request)

    async def release(self) -> None:
        """Lets every held workflow go on; run it on the server's loop (`ServerThread.run`)."""
        self._released.set()

    def describe_model(self, configuration: dict[str, Any]) -> str:
        return self.inner.describe_model(configuration)

    async def check(self) -> tuple[bool, str]:
        return await self.inner.check()

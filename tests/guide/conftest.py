"""The API Development Guide's own tests (../shared/seed/) against the real thing: the real Envoy in front of the
real service on the built-in offline model, once with auth off and once with auth on (HS256 tokens).

The guide's tests talk to FastAPI's `TestClient(app)`. Here `app` is a handle on the running service and
`TestClient` an adapter with the surface those tests use (`.post(path, json=...)`, `.get(path)`, a context
manager) that sends real HTTP with httpx to Envoy's REST port. The guide's test modules import both from here
in place of `fastapi.testclient` and `api.orchestrator_api`; their bodies are the guide's, byte for byte.

The service runs on a thread of its own (tests/server_thread.py): the guide's integration test is an async test
that makes blocking calls, so the service cannot share its event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from orchestrator.agents import PhaseRunner
from tests.conftest import make_settings
from tests.server_thread import HeldRunner, ServerThread
from tests.service.test_auth import AUDIENCE, ISSUER, SECRET, hs256

# Small enough that a test can send a body over it; the guide's bodies are far below it.
MAX_REQUEST_BYTES = 64 * 1024
# Auth on: limits are per tenant, and every test gets a tenant of its own (see `_point_app`), so only the test
# that wants a 429 spends a whole burst. Status polls at 0.1 s stay well inside it.
READ_BURST, READ_RATE = 100, 1.0


@dataclass
class GuideApp:
    """What the guide's tests import as `app`: where the running service is, and the token its clients carry
    with auth on (as a guide client behind its `HTTPBearer` would)."""

    base_url: str = ""
    token: str | None = None

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


app = GuideApp()


class TestClient:
    """FastAPI's TestClient as the guide's tests use it, over real HTTP to the real Envoy."""

    __test__ = False  # a helper, not a test class, whatever its name

    def __init__(self, app: GuideApp) -> None:
        self._app = app

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return self._send("POST", path, json=json)

    def get(self, path: str) -> httpx.Response:
        return self._send("GET", path)

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        # A client per call: the module-level `client = TestClient(app)` of the guide outlives each service
        # (one with auth off, one with auth on), so it must not keep a connection to either.
        assert self._app.base_url, "no service: the guide's tests run under the guide_service fixture"
        with httpx.Client(base_url=self._app.base_url, headers=self._app.headers(), timeout=20) as http:
            return http.request(method, path, **kwargs)


@dataclass
class GuideService:
    server: ServerThread
    runner: HeldRunner
    auth: bool

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def headers(self, tenant: str) -> dict[str, str]:
        """The Authorization header of `tenant` with auth on (read and write scopes); none with auth off."""
        return {"authorization": f"Bearer {hs256(tenant=tenant)}"} if self.auth else {}

    def release_held(self) -> None:
        self.server.run(self.runner.release())


@pytest.fixture(scope="package", params=["auth-off", "auth-on"])
def guide_service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuideService]:
    """One service per auth mode for the whole package (DBOS allows one engine per process at a time)."""
    auth_on = request.param == "auth-on"
    auth: dict[str, Any] = (
        {"enabled": True, "hs256_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}
        if auth_on
        else {"enabled": False}
    )
    limits = {"read_burst": READ_BURST, "read_rate_per_second": READ_RATE} if auth_on else {}
    settings = make_settings(
        tmp_path_factory.mktemp(f"guide-{request.param}") / "data",
        envoy=True,
        auth=auth,
        max_request_bytes=MAX_REQUEST_BYTES,
        **limits,
    )
    # The real agents on the offline model (the model a fresh install has), so "full" really writes code and
    # runs its tests in the sandbox; held only where a test asks for it.
    runner = HeldRunner(PhaseRunner(settings.agents))
    with ServerThread(settings, runner) as server:
        service = GuideService(server=server, runner=runner, auth=auth_on)
        try:
            yield service
        finally:
            service.release_held()


@pytest.fixture(autouse=True)
def _point_app(guide_service: GuideService, request: pytest.FixtureRequest) -> Iterator[None]:
    """Points the guide's `app` at the service; with auth on, each test acts for a tenant of its own."""
    app.base_url = guide_service.base_url
    app.token = hs256(tenant=tenant_of(request)) if guide_service.auth else None
    try:
        yield
    finally:
        app.base_url, app.token = "", None


def tenant_of(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)

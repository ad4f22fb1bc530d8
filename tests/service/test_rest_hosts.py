"""Allowed Host names from the settings, through a real Envoy in front of the real service."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.app import App
from tests.conftest import make_settings
from tests.runners import ScriptedRunner
from tests.service.test_rest_security import ORIGIN, assert_json_error

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]


async def test_configured_hosts_replace_the_defaults(tmp_path: Path, runner: ScriptedRunner) -> None:
    settings = make_settings(tmp_path / "data", envoy=True, allowed_hosts="api.example.com, *.internal.example")
    application = App(settings, runner=runner)
    await application.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}", timeout=20) as http:
            for host in ("api.example.com", f"api.example.com:{application.http_port}", "a.internal.example"):
                assert (await http.get("/workflow-types", headers={"host": host})).status_code == 200, host
            for host in ("localhost", "127.0.0.1", "internal.example", "api.example.com:8443"):
                assert_json_error(await http.get("/workflow-types", headers={"host": host}), 400, "INVALID_HOST")
            # No origin is allowed by default: no CORS headers, whatever the Origin.
            response = await http.get("/health", headers={"host": "api.example.com", "origin": ORIGIN})
            assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    finally:
        await application.stop(grace=0.5)

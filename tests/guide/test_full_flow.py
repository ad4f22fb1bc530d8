"""The API Development Guide's integration test, `tests/integration/api/test_full_flow.py` in its "Testing API
Endpoints", verbatim from `@pytest.mark.asyncio` on, `await asyncio.sleep(2)` included: that is the guide's own
polling, not this suite's synchronisation. Only the imports differ: `TestClient` and `app` come from
tests/guide/conftest.py (real HTTP to the real Envoy) instead of FastAPI (the guide leaves `app` unimported).
"""
# ruff: noqa: W293
# the guide's layout, whitespace-only lines included, kept as it is, so `ruff format` leaves it alone:
# fmt: off

import asyncio

import pytest

from tests.guide.conftest import TestClient, app


@pytest.mark.asyncio
async def test_full_workflow_execution():
    with TestClient(app) as client:
        # Submit workflow
        response = client.post(
            "/execute-workflow",
            json={
                "requirements": "Create a simple API",
                "workflow_type": "full"
            }
        )
        session_id = response.json()["session_id"]
        
        # Poll for completion
        max_attempts = 30
        for _ in range(max_attempts):
            status_response = client.get(f"/workflow-status/{session_id}")
            status = status_response.json()["status"]
            
            if status in ["completed", "failed"]:
                break
                
            await asyncio.sleep(2)
        
        # Verify completion
        assert status == "completed"
        assert "generated_code" in status_response.json()

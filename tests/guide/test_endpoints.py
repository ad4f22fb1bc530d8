"""The API Development Guide's unit tests, `tests/unit/api/test_endpoints.py` in its "Testing API Endpoints",
verbatim from `client = TestClient(app)` on. Only the imports differ: `TestClient` and `app` come from
tests/guide/conftest.py (real HTTP to the real Envoy) instead of FastAPI and the guide's app.
"""
# the guide's layout, kept as it is, so `ruff format` leaves it alone:
# fmt: off

from tests.guide.conftest import TestClient, app

client = TestClient(app)

def test_execute_workflow():
    response = client.post(
        "/execute-workflow",
        json={
            "requirements": "Create a calculator",
            "workflow_type": "full"
        }
    )
    assert response.status_code == 200
    data = response.json()
    assert "session_id" in data
    assert data["status"] == "accepted"

def test_invalid_workflow_type():
    response = client.post(
        "/execute-workflow",
        json={
            "requirements": "Test",
            "workflow_type": "invalid"
        }
    )
    assert response.status_code == 400
    assert "Unknown workflow type" in response.json()["detail"]

"""The API docs through a real Envoy: /openapi.json is the generated document, /docs is Swagger UI that loads
nothing from another origin, and what Envoy really answers on each REST path matches the document."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.app import App
from tests.conftest import make_settings
from tests.docs.openapi_check import OPENAPI, error_problems, load, problems, response_schema
from tests.runners import ScriptedRunner

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]


@pytest.fixture
async def http(tmp_path: Path, runner: ScriptedRunner) -> AsyncIterator[httpx.AsyncClient]:
    application = App(make_settings(tmp_path / "data", envoy=True), runner=runner)
    await application.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{application.http_port}", timeout=20) as client:
            yield client
    finally:
        await application.stop(grace=0.5)


class References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def is_relative(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("/")


async def test_openapi_json_is_the_generated_document(http: httpx.AsyncClient) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == OPENAPI.read_bytes()


async def test_docs_page_loads_only_from_this_origin(http: httpx.AsyncClient) -> None:
    redirect = await http.get("/docs")
    assert redirect.status_code == 308
    page_url = urljoin(str(redirect.url), redirect.headers["location"])
    assert urlsplit(page_url).path == "/docs/"

    page = await http.get(page_url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy  # no other origin is allowed anything
    parser = References()
    parser.feed(page.text)
    assert {"swagger-ui.css", "swagger-ui-bundle.js", "docs.js", "docs.css"} <= set(parser.urls)
    assert "<script>" not in page.text  # every script is a file, so script-src 'self' holds

    for url in parser.urls:
        assert is_relative(url), url
        asset = await http.get(urljoin(page_url, url))
        assert asset.status_code == 200, url
        if url.endswith(".css"):
            for reference in re.findall(r"url\(\s*['\"]?([^'\")]+)", asset.text):
                assert reference.startswith("data:") or is_relative(reference), reference
            assert "@import" not in asset.text

    script = (await http.get(urljoin(page_url, "docs.js"))).text
    assert "validatorUrl: null" in script  # the default would send the document to validator.swagger.io
    urls = re.findall(r"""url:\s*["']([^"']+)""", script)
    assert urls == ["../openapi.json"]
    spec = await http.get(urljoin(page_url, urls[0]))
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.")

    assert (await http.get("/docs/swagger-ui-bundle.js.map")).status_code == 200  # what devtools will ask for
    assert (await http.get("/docs/no-such-file.js")).status_code == 404
    assert (await http.get("/docs/../gateway/orchestrator.pb")).status_code == 404


async def test_what_envoy_serves_matches_the_document(http: httpx.AsyncClient) -> None:
    doc = load()

    def check(verb: str, path: str, body: Any, status: str = "200", media: str = "application/json") -> None:
        assert problems(doc, response_schema(doc, verb, path, status, media), body) == [], (path, body)

    submitted = await http.post(
        "/execute-workflow",
        json={"requirements": "a CLI", "workflow_type": "design", "configuration": {"language": "python"}},
    )
    assert submitted.status_code == 200
    check("POST", "/execute-workflow", submitted.json())
    session = submitted.json()["session_id"]

    async with http.stream("GET", f"/workflow-events/{session}") as stream:
        assert stream.status_code == 200
        lines = [json.loads(line) async for line in stream.aiter_lines() if line.strip()]
    for event in lines:
        check("GET", "/workflow-events/{session_id}", event, media="application/x-ndjson")
    assert lines[-1]["type"] == "EVENT_TYPE_WORKFLOW_COMPLETED"

    async with http.stream("GET", f"/api/v1/workflow-events/{session}", headers={"accept": "text/event-stream"}) as sse:
        assert sse.headers["content-type"] == "text/event-stream"
        text = (await sse.aread()).decode()
    frames = [frame for frame in text.split("\n\n") if frame.strip()]
    assert frames and all(frame.startswith("data: ") and "\n" not in frame for frame in frames)
    item = doc["paths"]["/workflow-events/{session_id}"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]
    for frame in frames:
        assert problems(doc, item["schema"], json.loads(frame.removeprefix("data: "))) == []

    status = await http.get(f"/workflow-status/{session}")
    check("GET", "/workflow-status/{session_id}", status.json())
    assert status.json()["state"] == "WORKFLOW_STATE_COMPLETED"
    check("GET", "/workflows", (await http.get("/workflows", params={"workflow_type": "design"})).json())
    check("GET", "/workflow-types", (await http.get("/workflow-types")).json())
    check("GET", "/health", (await http.get("/health")).json())

    # Errors: from the service (FAILED_PRECONDITION, NOT_FOUND, INVALID_ARGUMENT) and from Envoy itself.
    errors = [
        await http.post(f"/cancel-workflow/{session}", json={"reason": "too late"}),
        await http.get("/workflow-status/00000000-0000-0000-0000-000000000000"),
        await http.post("/execute-workflow", json={"workflow_type": "design"}),
        await http.get("/workflows", params={"no_such_parameter": "1"}),
        await http.post("/execute-workflow", content=b"{not json", headers={"content-type": "application/json"}),
    ]
    assert [e.status_code for e in errors] == [400, 404, 400, 400, 400]
    for error in errors:
        assert error.headers["content-type"] == "application/json"
        assert error_problems(doc, error.json()) == [], error.json()

"""The API docs through a real Envoy: /openapi.json is the generated document, /docs is Swagger UI and /redoc is
ReDoc, both answering at once (no redirect) and loading nothing from another origin, and what Envoy really
answers on each REST path matches the document."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.app import App
from tests.conftest import make_settings
from tests.docs.openapi_check import OPENAPI, ROOT, error_problems, load, problems, response_schema
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


async def page_and_assets(http: httpx.AsyncClient, path: str) -> tuple[httpx.Response, list[str]]:
    """GETs a docs page (no redirect followed) and every file it references, checking that each is relative, is
    served, and brings nothing from another origin; returns the page and the absolute URLs of its files."""
    page = await http.get(path)
    assert page.status_code == 200, (path, page.status_code, page.headers.get("location"))
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy  # no other origin is allowed anything
    assert "<script>" not in page.text  # every script is a file, so script-src 'self' holds
    parser = References()
    parser.feed(page.text)
    urls = []
    for url in parser.urls:
        assert is_relative(url), url
        absolute = urljoin(str(page.url), url)
        asset = await http.get(absolute)
        assert asset.status_code == 200, absolute
        if url.endswith(".css"):
            for reference in re.findall(r"url\(\s*['\"]?([^'\")]+)", asset.text):
                assert reference.startswith("data:") or is_relative(reference), reference
            assert "@import" not in asset.text
        urls.append(absolute)
    return page, urls


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
async def test_docs_page_loads_only_from_this_origin(http: httpx.AsyncClient, path: str) -> None:
    _, urls = await page_and_assets(http, path)
    names = {urlsplit(url).path for url in urls}
    assert {"/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/docs.js", "/docs/docs.css"} <= names

    script_url = next(url for url in urls if url.endswith("/docs.js"))
    script = (await http.get(script_url)).text
    assert "validatorUrl: null" in script  # the default would send the document to validator.swagger.io
    # The document's URL is resolved against the script's own, wherever the page is.
    assert 'new URL("../openapi.json", document.currentScript.src)' in script
    spec = await http.get(urljoin(script_url, "../openapi.json"))
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.")

    assert (await http.get("/docs/swagger-ui-bundle.js.map")).status_code == 200  # what devtools will ask for
    assert (await http.get("/docs/no-such-file.js")).status_code == 404
    assert (await http.get("/docs/../gateway/orchestrator.pb")).status_code == 404


@pytest.mark.parametrize("path", ["/redoc", "/redoc/"])
async def test_redoc_is_served_by_the_service_itself(http: httpx.AsyncClient, path: str) -> None:
    page, urls = await page_and_assets(http, path)
    assert [urlsplit(url).path for url in urls] == ["/redoc/redoc.standalone.js"]
    bundle = await http.get(urls[0])
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert bundle.content == (ROOT / "service" / "static" / "redoc" / "redoc.standalone.js").read_bytes()
    vendored = re.search(r'^VERSION = "([^"]+)"', (ROOT / "scripts" / "vendor_redoc.py").read_text(), re.MULTILINE)
    assert vendored is not None
    licence = await http.get("/redoc/redoc.standalone.js.LICENSE.txt")  # what the bundle's banner points to
    assert licence.status_code == 200 and f'Version: "{vendored.group(1)}"' in licence.text
    # Its search runs in a Web Worker ReDoc builds from a blob: URL of its own code; nothing else is allowed.
    assert "worker-src blob:" in page.headers["content-security-policy"]

    spec_url = re.search(r'<redoc spec-url="([^"]+)">', page.text)
    assert spec_url is not None and is_relative(spec_url.group(1))
    spec = await http.get(urljoin(str(page.url), spec_url.group(1)))
    assert urlsplit(str(spec.url)).path == "/openapi.json"
    assert spec.status_code == 200 and spec.content == OPENAPI.read_bytes()
    assert (await http.get("/redoc/no-such-file.js")).status_code == 404


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("ORCHESTRATOR_REQUIRE_CHROMIUM") == "1":
            pytest.fail("the browser test is required (ORCHESTRATOR_REQUIRE_CHROMIUM=1) but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/test.sh does)")
    return found


@pytest.mark.parametrize(("path", "rendered"), [("/docs", "swagger-ui"), ("/redoc", "redoc-wrap")])
async def test_a_browser_renders_the_docs_without_leaving_this_origin(
    http: httpx.AsyncClient, chromium: str, tmp_path: Path, path: str, rendered: str
) -> None:
    browser = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        "--virtual-time-budget=10000",
        str(http.base_url.join(path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        dom, log = await asyncio.wait_for(browser.communicate(), 50)
    finally:
        if browser.returncode is None:
            browser.kill()
            await browser.wait()
    text = dom.decode()
    assert rendered in text and "Agent Orchestrator REST API" in text, (text[:2000], log.decode()[-3000:])
    refused = [line for line in log.decode(errors="replace").splitlines() if "Content Security Policy" in line]
    # ReDoc's footer asks for its logo from its CDN: the policy refuses it before any request leaves the browser,
    # and ReDoc then hides the image. Nothing else may even try.
    assert all("https://cdn.redoc.ly/redoc/logo-mini.svg" in line for line in refused), refused


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
    assert lines[-1]["type"] == "workflow_completed"

    async with http.stream("GET", f"/api/v1/workflow-events/{session}", headers={"accept": "text/event-stream"}) as sse:
        assert sse.headers["content-type"] == "text/event-stream"
        text = (await sse.aread()).decode()
    frames = [frame for frame in text.split("\n\n") if frame.strip() and not frame.startswith(":")]
    item = doc["paths"]["/workflow-events/{session_id}"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]
    assert frames
    for frame in frames:
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        event = json.loads(fields["data"])
        assert fields.get("id") == event["sequence"] or event["type"] == "heartbeat", frame
        assert problems(doc, item["schema"], event) == []

    status = await http.get(f"/workflow-status/{session}")
    check("GET", "/workflow-status/{session_id}", status.json())
    assert status.json()["status"] == "completed"
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
    assert [e.status_code for e in errors] == [400, 404, 422, 400, 422]
    for error in errors:
        assert error.headers["content-type"] == "application/json"
        assert error_problems(doc, error.json()) == [], error.json()

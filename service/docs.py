"""The API documentation that MetricsServer serves and Envoy routes to: `GET /openapi.json` (docs/openapi.json,
generated from the protos), `GET /docs`, Swagger UI from the swagger-ui-bundle package, and `GET /redoc`, ReDoc
from its npm package's standalone bundle (vendored under service/static/redoc by scripts/vendor_redoc.py).

Every file a page needs comes from here, under relative URLs, and its Content-Security-Policy forbids any other
origin: the pages work offline and tell no third party who reads the docs. Both pages answer at their bare path
(`/docs`, as FastAPI serves them and as the API guide's clients expect, with no redirect) and with a trailing
slash; the relative URLs are written for the one asked for, so they also work behind a proxy that adds a prefix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import swagger_ui_bundle

OPENAPI: Final = Path(__file__).resolve().with_name("openapi.json")
SWAGGER_UI: Final = Path(str(swagger_ui_bundle.swagger_ui_path))
REDOC: Final = Path(__file__).resolve().parent / "static" / "redoc"

DOCS_PATH: Final = "/docs"
REDOC_PATH: Final = "/redoc"
OPENAPI_PATH: Final = "/openapi.json"

# From the packages: only these, by exact name, so a request path never reaches the file system. The source maps
# are what the Swagger bundle's sourceMappingURL comments name, for browser developer tools.
_SWAGGER_ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-bundle.js.map": "application/json",
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_REDOC_ASSETS: Final = {
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    # Its banner comment points here; MIT asks that the notice travel with the code.
    "redoc.standalone.js.LICENSE.txt": "text/plain; charset=utf-8",
    "LICENSE": "text/plain; charset=utf-8",
}

_SWAGGER_PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Agent Orchestrator API</title>
  <link rel="stylesheet" href="{base}swagger-ui.css">
  <link rel="stylesheet" href="{base}docs.css">
  <link rel="icon" type="image/png" href="{base}favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{base}favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{base}swagger-ui-bundle.js"></script>
  <script src="{base}docs.js"></script>
</body>
</html>
"""

# A file, not an inline script, so the policy can stay `script-src 'self'`. The document's URL is resolved
# against the script's own (always .../docs/docs.js), so it is right at /docs, /docs/ and under any prefix.
_SWAGGER_INIT: Final = b"""window.ui = SwaggerUIBundle({
  url: new URL("../openapi.json", document.currentScript.src).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default sends the document to validator.swagger.io for a badge.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""

_SWAGGER_CSS: Final = b"body { margin: 0; background: #fafafa; }\n"

# ReDoc starts itself on a <redoc spec-url> element: no script of ours, inline or not.
_REDOC_PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Agent Orchestrator API</title>
</head>
<body>
  <redoc spec-url="{spec}"></redoc>
  <script src="{base}redoc.standalone.js"></script>
</body>
</html>
"""

# Swagger UI sets inline styles, and its logo and icons are data: URIs; nothing may come from another origin.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# ReDoc writes its styles inline too (styled-components) and runs its search index in a Web Worker it builds
# from a blob: URL of its own code.
REDOC_CONTENT_SECURITY_POLICY: Final = CONTENT_SECURITY_POLICY.replace(
    "font-src 'self';", "font-src 'self'; worker-src blob:;"
)

_HTML: Final = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """What to answer a GET with."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


class ApiDocs:
    """`reply(path)` answers a docs path and returns None for any other path. The OpenAPI document is read once;
    the packages' files (a few MB with their source maps) are read from disk when asked for."""

    def __init__(self, openapi: Path = OPENAPI, swagger_ui: Path = SWAGGER_UI, redoc: Path = REDOC) -> None:
        self._openapi = openapi.read_bytes()
        # At /docs the page's files are under docs/; at /docs/ (and /docs/index.html) beside it.
        self._pages: dict[str, tuple[str, bytes, str]] = {
            DOCS_PATH: (_HTML, _SWAGGER_PAGE.format(base="docs/").encode(), CONTENT_SECURITY_POLICY),
            f"{DOCS_PATH}/": (_HTML, _SWAGGER_PAGE.format(base="").encode(), CONTENT_SECURITY_POLICY),
            f"{DOCS_PATH}/index.html": (_HTML, _SWAGGER_PAGE.format(base="").encode(), CONTENT_SECURITY_POLICY),
            f"{DOCS_PATH}/docs.js": ("text/javascript; charset=utf-8", _SWAGGER_INIT, CONTENT_SECURITY_POLICY),
            f"{DOCS_PATH}/docs.css": ("text/css; charset=utf-8", _SWAGGER_CSS, CONTENT_SECURITY_POLICY),
            REDOC_PATH: (
                _HTML,
                _REDOC_PAGE.format(base="redoc/", spec="openapi.json").encode(),
                REDOC_CONTENT_SECURITY_POLICY,
            ),
            f"{REDOC_PATH}/": (
                _HTML,
                _REDOC_PAGE.format(base="", spec="../openapi.json").encode(),
                REDOC_CONTENT_SECURITY_POLICY,
            ),
        }
        self._assets: dict[str, tuple[Path, str, str]] = {}
        for prefix, directory, assets, policy in (
            (DOCS_PATH, swagger_ui, _SWAGGER_ASSETS, CONTENT_SECURITY_POLICY),
            (REDOC_PATH, redoc, _REDOC_ASSETS, REDOC_CONTENT_SECURITY_POLICY),
        ):
            for name, kind in assets.items():
                self._assets[f"{prefix}/{name}"] = (directory / name, kind, policy)

    def reply(self, path: str) -> Reply | None:
        if path == OPENAPI_PATH:
            return Reply(200, self._openapi, (("Content-Type", "application/json"), ("Cache-Control", "no-cache")))
        if path in self._pages:
            # The pages and the Swagger init script change with this service.
            content_type, body, policy = self._pages[path]
            cache = "no-cache"
        elif path in self._assets:
            # They change only with the packages' versions.
            file, content_type, policy = self._assets[path]
            body, cache = file.read_bytes(), "public, max-age=3600"
        elif path.startswith((f"{DOCS_PATH}/", f"{REDOC_PATH}/")):
            return Reply(404, b"not found\n", (("Content-Type", "text/plain; charset=utf-8"),))
        else:
            return None
        headers = (("Content-Type", content_type), ("Content-Security-Policy", policy))
        return Reply(200, body, (*headers, ("Cache-Control", cache)))


@functools.cache
def shared() -> ApiDocs:
    """The documents of this installation, read at the first request."""
    return ApiDocs()

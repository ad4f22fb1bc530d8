"""The API documentation that MetricsServer serves and Envoy routes to: `GET /openapi.json` (docs/openapi.json,
generated from the protos) and `GET /docs/`, Swagger UI from the swagger-ui-bundle package.

Every file the page needs comes from here, under relative URLs, and its Content-Security-Policy forbids any other
origin: the page works offline and tells no third party who reads the docs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import swagger_ui_bundle

OPENAPI: Final = Path(__file__).resolve().with_name("openapi.json")
SWAGGER_UI: Final = Path(str(swagger_ui_bundle.swagger_ui_path))

DOCS_PREFIX: Final = "/docs/"
OPENAPI_PATH: Final = "/openapi.json"

# From the package: only these, by exact name, so a request path never reaches the file system. The source maps
# are what the bundle's sourceMappingURL comments name, for browser developer tools.
_ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-bundle.js.map": "application/json",
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui.css.map": "application/json",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

_INDEX: Final = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Agent Orchestrator API</title>
  <link rel="stylesheet" href="swagger-ui.css">
  <link rel="stylesheet" href="docs.css">
  <link rel="icon" type="image/png" href="favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="swagger-ui-bundle.js"></script>
  <script src="docs.js"></script>
</body>
</html>
"""

# A file, not an inline script, so the policy can stay `script-src 'self'`.
_INIT: Final = b"""window.ui = SwaggerUIBundle({
  url: "../openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default sends the document to validator.swagger.io for a badge.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
"""

_CSS: Final = b"body { margin: 0; background: #fafafa; }\n"

# Swagger UI sets inline styles, and its logo and icons are data: URIs; nothing may come from another origin.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Reply:
    """What to answer a GET with."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]


class ApiDocs:
    """`reply(path)` answers a docs path and returns None for any other path. The OpenAPI document is read once;
    the package's files (a few MB with their source maps) are read from disk when asked for."""

    def __init__(self, openapi: Path = OPENAPI, swagger_ui: Path = SWAGGER_UI) -> None:
        self._openapi = openapi.read_bytes()
        self._swagger_ui = swagger_ui
        self._pages: dict[str, tuple[str, bytes]] = {
            "": ("text/html; charset=utf-8", _INDEX),
            "index.html": ("text/html; charset=utf-8", _INDEX),
            "docs.js": ("text/javascript; charset=utf-8", _INIT),
            "docs.css": ("text/css; charset=utf-8", _CSS),
        }

    def reply(self, path: str) -> Reply | None:
        if path == OPENAPI_PATH:
            return Reply(200, self._openapi, (("Content-Type", "application/json"), ("Cache-Control", "no-cache")))
        if path == DOCS_PREFIX.rstrip("/"):
            # The page's relative URLs need the trailing slash. A relative Location keeps working behind a proxy
            # that mounts the service under a prefix.
            return Reply(308, b"", (("Location", "docs/"),))
        if not path.startswith(DOCS_PREFIX):
            return None
        name = path.removeprefix(DOCS_PREFIX)
        if name in _ASSETS:
            # They change only with the package's version; the page and its script with this service.
            content_type, body, cache = _ASSETS[name], (self._swagger_ui / name).read_bytes(), "public, max-age=3600"
        elif name in self._pages:
            (content_type, body), cache = self._pages[name], "no-cache"
        else:
            return Reply(404, b"not found\n", (("Content-Type", "text/plain; charset=utf-8"),))
        headers = (("Content-Type", content_type), ("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        return Reply(200, body, (*headers, ("Cache-Control", cache)))


@functools.cache
def shared() -> ApiDocs:
    """The documents of this installation, read at the first request."""
    return ApiDocs()

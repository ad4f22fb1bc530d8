#!/usr/bin/env bash
# Sets up everything the tests need (a venv, the package with its dev tools, buf and swagger2openapi from npm,
# protoc-gen-swagger from Debian, the Node.js example's packages) and runs every check:
# contract lint and breaking-change check, generated-file drift, ruff, mypy, Envoy config validation, pytest.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# The `llm` tests serve a real model with llama.cpp: installed here (compiled once, then from pip's cache), they
# must run, not skip.
bash .ci/llama.sh
export ORCHESTRATOR_REQUIRE_LLM=1
export PATH="$PWD/.venv/bin:$PATH"

if [ ! -x .ci/tools/node_modules/.bin/buf ]; then
  npm install --silent --no-audit --no-fund --prefix .ci/tools @bufbuild/buf@1.75.0 >/dev/null
fi
BUF=.ci/tools/node_modules/.bin/buf
# docs/openapi.json is made by Debian's protoc-gen-swagger and npm's swagger2openapi (scripts/generate.py).
if [ ! -x /usr/bin/protoc-gen-swagger ] && ! command -v protoc-gen-swagger >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "protoc-gen-swagger is missing: sudo apt-get install golang-grpc-gateway" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-grpc-gateway >/dev/null
fi
if [ ! -x .ci/tools/node_modules/.bin/swagger2openapi ]; then
  npm install --silent --no-audit --no-fund --prefix .ci/tools swagger2openapi@7.0.8 >/dev/null
fi
# Prometheus and promtool (Debian's package): a real Prometheus scrapes the service in the tests, and promtool
# checks the metrics output and deploy/prometheus.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus is missing: sudo apt-get install prometheus" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Chromium (Debian's package): a headless page opens the guide's WebSocket through Envoy in the tests, and must run,
# not skip.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is missing: sudo apt-get install chromium" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
export ORCHESTRATOR_REQUIRE_CHROMIUM=1
# The full-disk fault test mounts a small tmpfs (root with CAP_SYS_ADMIN, as in CI): it must run, not skip.
export ORCHESTRATOR_REQUIRE_TMPFS=1
# The Node.js client example runs against the real server in the tests.
(cd clients/node && npm ci --silent --no-audit --no-fund >/dev/null)

echo "== buf lint"
"$BUF" lint
if git rev-parse --verify --quiet HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  echo "== buf breaking (against the previous commit)"
  "$BUF" breaking --against '.git#ref=HEAD~1'
fi
echo "== generated files"
python scripts/generate.py --check
echo "== vendored ReDoc (service/static/redoc, from the npm package)"
python scripts/vendor_redoc.py --check
echo "== ruff"
ruff check .
echo "== mypy"
mypy orchestrator service gateway
echo "== envoy --mode validate"
python -m gateway render --grpc-port 50051 --metrics-port 9464 > .ci/envoy-rendered.yaml
python -m gateway validate .ci/envoy-rendered.yaml
echo "== pytest"
# The run includes the `fuzz` tests (schemathesis over REST from docs/openapi.json, hypothesis over gRPC; bounded
# to well under two minutes); `scripts/test.sh -m 'not fuzz'` leaves them out of a quick local run.
status=0
# Each test has its own timeout (pytest-timeout); this one bounds the whole run, so a hang cannot eat CI's hour.
timeout --kill-after=30 1500 python -m pytest -q -p no:cacheprovider "$@" || status=$?
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
exit $status

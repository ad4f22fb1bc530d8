#!/usr/bin/env bash
# Sets up everything the tests need (a venv, the package with its dev tools, buf from npm) and runs every check:
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
export PATH="$PWD/.venv/bin:$PATH"

if [ ! -x .ci/tools/node_modules/.bin/buf ]; then
  npm install --silent --no-audit --no-fund --prefix .ci/tools @bufbuild/buf@1.75.0 >/dev/null
fi
BUF=.ci/tools/node_modules/.bin/buf

echo "== buf lint"
"$BUF" lint
if git rev-parse --verify --quiet HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  echo "== buf breaking (against the previous commit)"
  "$BUF" breaking --against '.git#ref=HEAD~1'
fi
echo "== generated files"
python scripts/generate.py --check
echo "== ruff"
ruff check .
echo "== mypy"
mypy orchestrator service gateway
echo "== envoy --mode validate"
python -m gateway render --grpc-port 50051 --metrics-port 9464 > .ci/envoy-rendered.yaml
python -m gateway validate .ci/envoy-rendered.yaml
echo "== pytest"
status=0
python -m pytest -q -p no:cacheprovider "$@" || status=$?
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
exit $status

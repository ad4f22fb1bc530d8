#!/usr/bin/env bash
# One command from a fresh clone: set up, start the service with its Envoy sidecar on embedded defaults
# (SQLite in ./data, the built-in offline model), submit a `full` workflow through REST and watch it live.
# The service keeps running afterwards for you to try the API; Ctrl-C stops it. `--once` stops after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e . >/dev/null 2>&1 || .venv/bin/python -m pip install -e .
export PATH="$PWD/.venv/bin:$PATH"

HTTP_PORT=${ORCHESTRATOR_HTTP_PORT:-8080}
export ORCHESTRATOR_LOG_FORMAT=${ORCHESTRATOR_LOG_FORMAT:-text}
export ORCHESTRATOR_LOG_LEVEL=${ORCHESTRATOR_LOG_LEVEL:-WARNING}
# Authentication is on by default and has no default key; this local demo turns it off explicitly (see the
# README's "Authentication and tenants" to run with tokens).
export ORCHESTRATOR_AUTH__ENABLED=${ORCHESTRATOR_AUTH__ENABLED:-false}
orchestrator serve --data-dir "${ORCHESTRATOR_DATA_DIR:-data}" --http-port "$HTTP_PORT" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM

base="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 150); do
  curl -fsS "$base/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the service did not start" >&2; exit 1; }
  sleep 0.2
done
echo "== GET $base/health"
curl -fsS "$base/health"; echo

echo "== POST $base/execute-workflow"
response=$(curl -fsS -X POST "$base/execute-workflow" -H 'content-type: application/json' \
  -d '{"requirements": "A command-line tool that converts temperatures between Celsius and Fahrenheit", "workflow_type": "full", "priority": "high"}')
echo "$response"
session=$(python -c 'import json,sys; print(json.loads(sys.argv[1])["session_id"])' "$response")

echo "== GET $base/workflow-events/$session (NDJSON, live)"
curl -fsSN "$base/workflow-events/$session" | python scripts/quickstart_view.py events

echo "== GET $base/workflow-status/$session"
curl -fsS "$base/workflow-status/$session" | python scripts/quickstart_view.py status
if [ "${1:-}" = "--once" ]; then
  exit 0
fi
echo
echo "The service is running: REST on $base, gRPC on 127.0.0.1:50051, metrics on $base/metrics. Ctrl-C stops it."
wait $server

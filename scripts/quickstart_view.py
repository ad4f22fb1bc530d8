"""Pretty-prints what the quick start reads over REST: `events` (NDJSON on stdin) or `status` (JSON on stdin).

It reads both the proto JSON (`state`, `EVENT_TYPE_*`, the result under `result`) and the API guide's REST shape
(`status`, lower-case words, the result's fields at the top level), so it keeps working while either is served.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# The generated tests' outcome in one sentence, worded as the service words it (orchestrator/outcome.py).
from orchestrator.models import TestReport
from orchestrator.outcome import classify_test_report

TERMINAL = ("workflow_completed", "workflow_failed", "workflow_cancelled")


def _kind(event: dict[str, Any]) -> str:
    return str(event.get("type", "")).removeprefix("EVENT_TYPE_").lower()


def events() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        event = json.loads(line)
        kind = _kind(event)
        if kind == "heartbeat":
            continue
        progress = int(event.get("progress", 0))
        bar = "#" * (progress // 5) + "." * (20 - progress // 5)
        message = str(event.get("message", ""))
        # The last event says how the workflow (and its tests) ended: never cut it short.
        shown = message if kind in TERMINAL else message[:90]
        print(f"[{bar}] {progress:3d}%  #{event.get('sequence', '?')!s:<3} {kind} {event.get('phase', '')}  {shown}")
        sys.stdout.flush()


def tests_line(status: dict[str, Any]) -> str | None:
    """How the generated tests went, plainly; None when the workflow has not run tests (yet)."""
    # The tests phase's own sentence (partial_results keeps each phase's output), which knows why tests did not run.
    for output in (status.get("partial_results") or {}).values():
        report = output.get("report") if isinstance(output, dict) else None
        if isinstance(report, dict) and report.get("summary"):
            return str(report["summary"])
    result = status.get("result") or status
    report = result.get("test_report") if isinstance(result, dict) else None
    if not isinstance(report, dict):
        return None
    return classify_test_report(TestReport.model_validate(report, strict=False)).message


def status() -> None:
    s = json.load(sys.stdin)
    result = s.get("result") or s
    state = s.get("status") or s.get("state")
    print("state:", state, " progress:", s.get("progress"), " phases:", ", ".join(s.get("phases_completed", [])))
    for f in result.get("generated_code", []):
        print(f"  file: {f['path']} ({len(f['content'])} bytes)")
    tests = tests_line(s)
    if tests is not None:
        print(tests[:1].upper() + tests[1:])
    for error in s.get("errors") or []:
        text = error.get("message", "") if isinstance(error, dict) else str(error)
        if text and text != tests:
            print("error:", text)
    print("usage:", json.dumps(result.get("usage", {})))


if __name__ == "__main__":
    {"events": events, "status": status}[sys.argv[1]]()

"""What a test report says in one plain line: the generated tests passed, some failed, or they never ran.

One pure function, so the tests phase's output, the completion event, the status's errors and the quick start's
viewer all word it the same way. "Did not run" (collection or usage errors, nothing collected, no test runner)
is kept apart from "ran and failed": the first is rarely the generated code's fault, and `0 passed, 0 failed`
must never read like a clean run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["OutcomeKind", "ReportLike", "ReportOutcome", "classify_test_report"]

OutcomeKind = Literal["passed", "failed", "not_run"]

# Notes the sandbox appends to the captured output when a run ended abnormally (orchestrator/sandbox.py).
_SANDBOX_NOTE = "[sandbox: "
# pytest's closing line, e.g. "2 errors in 0.10s".
_PYTEST_SUMMARY = re.compile(r"\bin [0-9.]+s\b")


class ReportLike(Protocol):
    """The fields every test report of the codebase has: the sandbox's, the tests phase's and the result's."""

    @property
    def passed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def success(self) -> bool: ...
    @property
    def output(self) -> str: ...
    @property
    def not_run_reason(self) -> str: ...


@dataclass(frozen=True)
class ReportOutcome:
    """`kind` for machines (e.g. an error code `tests_failed` / `tests_not_run`), `message` for people."""

    kind: OutcomeKind
    message: str


def classify_test_report(report: ReportLike) -> ReportOutcome:
    """The outcome of a test run and a sentence saying it, e.g. "3 of 10 generated tests failed" or
    "tests did not run: no tests were collected"."""
    if report.not_run_reason:
        return ReportOutcome("not_run", f"tests did not run: {report.not_run_reason}")
    if report.success:
        return ReportOutcome("passed", f"{_tests(report.passed)} passed")
    if report.passed + report.failed == 0:
        last = _last_line(report.output)
        if last.startswith(_SANDBOX_NOTE):  # ran, then killed (time or resource limit) before its summary
            note = last.removeprefix(_SANDBOX_NOTE).rstrip("]")
            return ReportOutcome("failed", f"the generated tests failed: {note}")
        if report.errors == 0 or "Interrupted:" in report.output or not _PYTEST_SUMMARY.search(last):
            # Nothing ran. A report the sandbox wrote says why in not_run_reason; this covers older ones.
            return ReportOutcome("not_run", f"tests did not run: {last or 'no test result was reported'}")
        # Otherwise every test errored in its setup: they ran, and failed.
    bad = report.failed + report.errors
    total = report.passed + bad
    detail = f" ({report.failed} failed, {report.errors} with errors)" if report.failed and report.errors else ""
    return ReportOutcome("failed", f"{bad} of {_tests(total)} failed{detail}")


def _tests(count: int) -> str:
    return f"{count} generated test{'' if count == 1 else 's'}"


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""

"""Generated tests run on every install, and a run that never ran a test is told apart from one that failed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orchestrator.models import TestReport as StoredReport  # aliased: pytest would try to collect Test*
from orchestrator.outcome import classify_test_report
from orchestrator.sandbox import SandboxLimits, TestRunReport, run_tests

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits()

CALC = {"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"}


def tfile(name: str, body: str) -> dict[str, str]:
    return {"path": f"tests/{name}", "content": body}


# What the venv's interpreter runs: the real sandbox, as the service calls it, on a passing test.
_PROBE = """
import asyncio
from orchestrator.sandbox import SandboxLimits, run_tests
files = [
    {"path": "calc.py", "content": "def add(a, b):\\n    return a + b\\n"},
    {
        "path": "tests/test_calc.py",
        "content": "from calc import add\\n\\ndef test_add():\\n    assert add(1, 2) == 3\\n",
    },
]
print(asyncio.run(run_tests(files, timeout_s=60, limits=SandboxLimits())).model_dump_json())
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_install_without_the_dev_extras_runs_generated_tests(tmp_path: Path) -> None:
    """A fresh clone's quick start installs the project without its dev extras; the sandbox then runs pytest on
    the server's own interpreter, as the unprivileged sandbox user with a stripped environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    try:
        _install_and_probe(venv, tmp_path)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 300 MB (Envoy's binary among them)


def _install_and_probe(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", *dependencies],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # `pip install -e .` without extras, minus the build: the checkout on the venv's path.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    Path(purelib, "agent_orchestrator_checkout.pth").write_text(f"{ROOT}\n")
    probe = subprocess.run(
        [str(python), "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},  # nothing of this test run's environment
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = TestRunReport.model_validate_json(probe.stdout.strip().splitlines()[-1])
    assert report.not_run_reason == "", report.output
    assert (report.passed, report.failed, report.errors, report.success) == (1, 0, 0, True), report.output
    assert classify_test_report(report).message == "1 generated test passed"


@pytest.fixture
def python_without_pytest(tmp_path: Path) -> str:
    """An interpreter like the one a fresh clone's quick start used to install: no pytest."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    return str(bare / "bin" / "python")


async def test_a_missing_test_runner_means_the_tests_did_not_run(python_without_pytest: str) -> None:
    """What a fresh clone's quick start used to report as `0 passed, 0 failed` and a completed workflow."""
    limits = LIMITS.model_copy(update={"python": python_without_pytest})
    files = [CALC, tfile("test_calc.py", "def test_x():\n    assert True\n")]
    report = await run_tests(files, timeout_s=30, limits=limits)
    assert "No module named pytest" in report.output
    assert report.success is False and report.passed == report.failed == 0
    assert "No module named pytest" in report.not_run_reason
    outcome = classify_test_report(report)
    assert outcome.kind == "not_run"
    assert outcome.message.startswith("tests did not run: the test runner did not start")
    assert "0 passed" not in outcome.message


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        pytest.param(
            [tfile("test_x.py", "import does_not_exist\n")],
            "errors while collecting the tests (tests/test_x.py: ModuleNotFoundError: No module named "
            "'does_not_exist')",
            id="collection-error",
        ),
        pytest.param(
            [tfile("test_x.py", "def test_broken(:\n")],
            "errors while collecting the tests (tests/test_x.py: SyntaxError: invalid syntax)",
            id="syntax-error",
        ),
        pytest.param([CALC, tfile("helpers.py", "X = 1\n")], "no tests were collected", id="nothing-collected"),
        pytest.param(
            [tfile("test_s.py", "import pytest\n\n@pytest.mark.skip\ndef test_a():\n    pass\n")],
            "the one collected test was skipped",
            id="all-skipped",
        ),
    ],
)
async def test_runs_that_ran_no_test_say_why(files: list[dict[str, str]], reason: str) -> None:
    report = await run_tests(files, timeout_s=30, limits=LIMITS)
    assert report.not_run_reason == reason, report.output
    assert report.success is False and report.passed == report.failed == 0
    outcome = classify_test_report(report)
    assert (outcome.kind, outcome.message) == ("not_run", f"tests did not run: {reason}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            "from calc import add\n\ndef test_a():\n    assert add(1, 1) == 2\n\n"
            "def test_b():\n    assert add(1, 1) == 3\n\ndef test_c():\n    assert add(2, 2) == 5\n",
            "2 of 3 generated tests failed",
            id="assertions",
        ),
        pytest.param(
            "import pytest\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError('no')\n\n"
            "def test_a(broken):\n    pass\n\ndef test_b(broken):\n    pass\n",
            "2 of 2 generated tests failed",
            id="setup-errors",
        ),
    ],
)
async def test_runs_whose_tests_failed_say_how_many(body: str, message: str) -> None:
    report = await run_tests([CALC, tfile("test_calc.py", body)], timeout_s=30, limits=LIMITS)
    assert report.not_run_reason == "" and report.success is False, report.output
    assert classify_test_report(report).kind == "failed"
    assert classify_test_report(report).message == message


async def test_a_run_killed_at_its_time_limit_failed_rather_than_never_ran() -> None:
    files = [tfile("test_loop.py", "def test_forever():\n    while True:\n        pass\n")]
    report = await run_tests(files, timeout_s=2, limits=LIMITS)
    assert report.timed_out and report.not_run_reason == ""
    outcome = classify_test_report(report)
    assert (outcome.kind, outcome.message) == ("failed", "the generated tests failed: killed after the 2s time limit")


def test_reports_stored_before_the_reason_existed_are_classified_from_their_output() -> None:
    old_missing_runner = StoredReport(errors=1, output="/srv/venv/bin/python: No module named pytest\n")
    assert classify_test_report(old_missing_runner).kind == "not_run"
    assert classify_test_report(old_missing_runner).message == (
        "tests did not run: /srv/venv/bin/python: No module named pytest"
    )
    old_collection_error = StoredReport(
        errors=1, output="ERROR tests/test_x.py\n!!! Interrupted: 1 error during collection !!!\n1 error in 0.05s\n"
    )
    assert classify_test_report(old_collection_error).kind == "not_run"
    passed = StoredReport(passed=12, success=True, output="12 passed in 0.10s\n")
    assert classify_test_report(passed).message == "12 generated tests passed"
    mixed = StoredReport(passed=7, failed=2, errors=1, output="2 failed, 7 passed, 1 error in 0.3s\n")
    assert classify_test_report(mixed).message == "3 of 10 generated tests failed (2 failed, 1 with errors)"

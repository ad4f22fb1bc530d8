"""The sandbox: real pytest runs in a subprocess with limits, no network, no secrets, no writes outside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator import reaper
from orchestrator.sandbox import SandboxError, SandboxLimits, parse_pytest_summary, run_tests

pytestmark = pytest.mark.timeout(60)

LIMITS = SandboxLimits()


def tfile(name: str, body: str) -> dict[str, str]:
    return {"path": f"tests/{name}", "language": "python", "content": body}


async def test_counts_passing_and_failing_tests() -> None:
    files = [
        {"path": "calc/__init__.py", "content": "def add(a, b):\n    return a + b\n"},
        tfile(
            "test_calc.py",
            "from calc import add\n\ndef test_ok():\n    assert add(1, 2) == 3\n\n"
            "def test_also_ok():\n    assert add(0, 0) == 0\n\ndef test_broken():\n    assert add(1, 2) == 4\n",
        ),
    ]
    report = await run_tests(files, timeout_s=30, limits=LIMITS)
    assert (report.passed, report.failed, report.errors) == (2, 1, 0)
    assert report.success is False and report.exit_code == 1 and not report.timed_out
    assert "FAILED tests/test_calc.py::test_broken" in report.output
    assert "namespaces" in report.isolation


async def test_collection_error_is_counted_as_an_error() -> None:
    report = await run_tests([tfile("test_x.py", "import does_not_exist\n")], timeout_s=30, limits=LIMITS)
    assert report.errors == 1 and report.success is False


async def test_infinite_loop_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    files = [tfile("test_loop.py", "def test_forever():\n    while True:\n        pass\n")]
    report = await run_tests(files, timeout_s=2, limits=LIMITS)
    assert report.timed_out is True and report.success is False and report.errors >= 1
    assert "killed after the 2s time limit" in report.output
    assert time.monotonic() - started < 10


async def test_network_connection_is_refused_even_to_a_listening_loopback_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        body = (
            "import socket\nimport pytest\n\n"
            "def test_cannot_connect():\n"
            "    with pytest.raises(OSError):\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        )
        report = await run_tests([tfile("test_net.py", body)], timeout_s=30, limits=LIMITS)
        assert report.passed == 1 and report.success, report.output
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever reached the listener
            listener.accept()


async def test_secrets_in_the_server_environment_are_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_TEST_SECRET", "s3cr3t-value")
    body = (
        "import os\nimport pytest\n\n"
        "def test_environment_is_stripped():\n"
        "    assert 'ORCHESTRATOR_TEST_SECRET' not in os.environ\n"
        "    assert not any('s3cr3t' in value for value in os.environ.values())\n"
        "    ours = {key for key in os.environ if not key.startswith('PYTEST_')}  # pytest sets its own\n"
        "    assert ours == {'PATH', 'HOME', 'LANG', 'PYTHONDONTWRITEBYTECODE', 'PYTHONPATH'}\n\n"
        "def test_server_process_environment_is_unreachable():\n"
        f"    with pytest.raises(OSError):\n"
        f"        open('/proc/{os.getpid()}/environ', 'rb').read()\n"
    )
    report = await run_tests([tfile("test_env.py", body)], timeout_s=30, limits=LIMITS)
    assert report.passed == 2 and report.success, report.output


async def test_files_outside_the_project_are_not_writable() -> None:
    shared = Path(tempfile.mkdtemp(prefix="sandbox-outside-"))  # on the host's /tmp, writable by everyone
    shared.chmod(0o777)
    try:
        targets = [str(shared / "escaped.txt"), "/etc/escaped.txt", "/var/tmp/escaped.txt", "/dev/shm/escaped.txt",
                   str(Path(__file__).resolve().parent / "escaped.txt")]  # fmt: skip
        body = (
            "import pytest\nfrom pathlib import Path\n\n"
            f"TARGETS = {targets!r}\n\n"
            "@pytest.mark.parametrize('target', TARGETS)\n"
            "def test_cannot_write_outside(target):\n"
            "    with pytest.raises(OSError):\n"
            "        Path(target).write_text('x')\n\n"
            "def test_can_write_inside_the_project():\n"
            "    Path('inside.txt').write_text('ok')\n"
            "    assert Path('inside.txt').read_text() == 'ok'\n"
        )
        report = await run_tests([tfile("test_fs.py", body)], timeout_s=30, limits=LIMITS)
        assert report.passed == len(targets) + 1 and report.success, report.output
        assert not any(Path(target).exists() for target in targets)
    finally:
        for leftover in shared.iterdir():
            leftover.unlink()
        shared.rmdir()


async def test_memory_file_size_and_process_limits_apply() -> None:
    body = (
        "import os\nimport time\nimport pytest\n\n"
        "def test_memory_is_limited():\n"
        "    with pytest.raises(MemoryError):\n"
        "        bytearray(1024 ** 3)\n\n"
        "def test_file_size_is_limited():\n"
        "    with pytest.raises(OSError):\n"
        "        with open('big.bin', 'wb') as f:\n"
        "            f.write(b'x' * 2 * 1024 * 1024)\n\n"
        "def test_processes_are_limited():\n"
        "    children = []\n"
        "    try:\n"
        "        with pytest.raises(OSError):\n"
        "            for _ in range(100):\n"
        "                pid = os.fork()\n"
        "                if pid == 0:\n"
        "                    time.sleep(30)\n"
        "                    os._exit(0)\n"
        "                children.append(pid)\n"
        "    finally:\n"
        "        for pid in children:\n"
        "            os.kill(pid, 9)\n"
        "    assert len(children) < 16\n"
    )
    limits = SandboxLimits(memory_bytes=512 * 1024**2, file_size_bytes=1024**2, max_processes=16)
    report = await run_tests([tfile("test_limits.py", body)], timeout_s=30, limits=limits)
    assert report.passed == 3 and report.success, report.output


async def test_output_is_captured_and_truncated() -> None:
    body = "def test_noisy():\n    print('x' * 1_000_000)\n    assert False\n"
    limits = SandboxLimits(output_chars=5_000)
    report = await run_tests([tfile("test_noisy.py", body)], timeout_s=30, limits=limits)
    assert report.failed == 1  # the summary at the end survives the truncation
    assert len(report.output) < 5_000 + 200
    assert "bytes of output omitted" in report.output


async def test_unsafe_paths_are_refused() -> None:
    for path in ("../escape.py", "/etc/passwd", "a/../../b.py", ""):
        with pytest.raises(SandboxError, match="unsafe file path"):
            await run_tests([{"path": path, "content": "x"}], timeout_s=5, limits=LIMITS)


def _sandbox_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
            if uid_line.split()[1:2] == [str(LIMITS.run_as_uid)]:
                found.append(int(entry.name))
    return found


async def test_cancellation_kills_the_run_and_cleans_up(tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    limits = SandboxLimits(work_dir=str(work_dir))
    body = (
        "import time\nfrom pathlib import Path\n\n"
        "def test_hangs():\n"
        "    Path('started').write_text('yes')\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
    )
    task = asyncio.create_task(run_tests([tfile("test_hang.py", body)], timeout_s=60, limits=limits))
    deadline = time.monotonic() + 20
    while not list(work_dir.glob("*/run-*/project/started")):
        assert time.monotonic() < deadline, "the sandboxed test never started"
        assert not task.done(), task
        await asyncio.sleep(0.02)
    assert _sandbox_processes()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while _sandbox_processes():
        assert time.monotonic() < deadline, "sandbox processes outlived the cancellation"
        await asyncio.sleep(0.02)
    assert list(work_dir.glob("*/run-*")) == []


def test_parse_pytest_summary() -> None:
    assert parse_pytest_summary("....\n4 passed in 0.01s\n") == (4, 0, 0)
    assert parse_pytest_summary("F.\n1 failed, 1 passed, 2 warnings in 0.20s\n") == (1, 1, 0)
    assert parse_pytest_summary("E\n1 error in 0.05s\n") == (0, 0, 1)
    assert parse_pytest_summary("= 2 failed, 3 passed, 1 skipped, 2 errors in 1.50s =") == (3, 2, 2)
    assert parse_pytest_summary("no tests ran in 0.01s") == (0, 0, 0)
    assert parse_pytest_summary("garbage") == (0, 0, 0)


async def test_hidden_directories_are_empty_inside_the_sandbox() -> None:
    # Outside /tmp (the sandbox replaces /tmp anyway), readable by everyone: only hiding keeps it from the tests.
    try:
        secret_dir = Path(tempfile.mkdtemp(prefix="orchestrator-hidden-", dir="/opt"))
    except OSError:
        pytest.skip("needs a world-readable directory outside /tmp (writable /opt, as root in CI)")
    try:
        secret_dir.chmod(0o755)
        (secret_dir / "orchestrator.sqlite").write_text("every tenant's sessions")
        (secret_dir / "orchestrator.sqlite").chmod(0o644)
        body = (
            "from pathlib import Path\n\n"
            f"def test_reads_the_data():\n    assert Path({str(secret_dir / 'orchestrator.sqlite')!r}).read_text()\n"
        )
        visible = await run_tests([tfile("test_peek.py", body)], timeout_s=30, limits=LIMITS)
        assert visible.passed == 1, visible.output  # without hiding, the file is there to read
        hidden_limits = LIMITS.model_copy(update={"hidden_dirs": (str(secret_dir),)})
        hidden = await run_tests([tfile("test_peek.py", body)], timeout_s=30, limits=hidden_limits)
        assert hidden.failed == 1 and "No such file" in hidden.output, hidden.output
    finally:
        for child in secret_dir.iterdir():
            child.unlink()
        secret_dir.rmdir()


def test_sweep_kills_a_leftover_session_and_removes_its_directory(tmp_path: Path) -> None:
    """The fallback without a cgroup: a run is found by the session id its marker names."""
    owner = f"sweep-{os.getpid()}"
    root = reaper.owner_root(owner, str(tmp_path))
    run = root / "run-leftover"
    (run / "project").mkdir(parents=True)
    # A session leader and a child it started, as a killed server's `unshare` and pytest would be.
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (run / "sandbox-run.json").write_text(json.dumps({"session": leader.pid, "boot_id": boot_id, "cgroup": ""}))
    deadline = time.monotonic() + 5
    while len(members := reaper._session_members(leader.pid)) < 2:  # the shell forks its child
        assert time.monotonic() < deadline, members
        time.sleep(0.02)
    report = reaper.sweep(owner, str(tmp_path))
    leader.wait(5)
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in members):
        assert time.monotonic() < deadline, "the swept session's processes are still running"
        time.sleep(0.02)
    assert report.processes_killed == 2
    assert not run.exists() and report.directories_removed == 1


def test_sweep_kills_what_is_left_in_a_run_cgroup(tmp_path: Path) -> None:
    owner = f"sweep-cg-{os.getpid()}"
    scope = reaper.open_run(owner, str(tmp_path))
    if scope.cgroup is None:
        pytest.skip("no writable cgroup v2 here: runs are found by session instead")
    try:
        # A process that left the run's session (setsid) but not its cgroup: only the cgroup finds it.
        escaped = subprocess.Popen(
            ["/bin/sh", "-c", 'echo $$ > "$0" && exec setsid sleep 300', str(scope.cgroup / "cgroup.procs")]
        )
        deadline = time.monotonic() + 5
        while not (scope.cgroup / "cgroup.procs").read_text().split():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        report = reaper.sweep(owner, str(tmp_path))
        assert escaped.wait(5) == -signal.SIGKILL
        assert report.cgroups_removed == 1 and not scope.cgroup.exists()
        assert not scope.base.exists()
    finally:
        scope.close()
        with contextlib.suppress(OSError):
            scope.cgroup.parent.rmdir()


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2 :].split()[0]

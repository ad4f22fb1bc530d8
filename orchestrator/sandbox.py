"""Runs generated tests with pytest in a throwaway, isolated subprocess, never in the server process.

Long because isolation has many layers (namespaces, limits, uid, cgroup, death signal, report parsing) that
must be read together to trust them; it has one job.

How it isolates (Linux, util-linux `unshare`, `mount`, `prlimit`, `setpriv`):

- As root: new network, mount and PID namespaces (`unshare --net --mount --pid --fork --mount-proc`); inside, a
  private writable tmpfs replaces `/tmp` and holds the project at `/tmp/sandbox`; `/run` (host Unix sockets such
  as PostgreSQL's), `/var/tmp` and `/dev/shm` are covered by empty read-only tmpfs; then the process drops to
  `nobody` with no capabilities and `no_new_privs`. It can write only its project and its private `/tmp`, reach no
  network (loopback is down in the new namespace), and see no host process. When the interpreter lives under a
  directory `nobody` cannot traverse (e.g. `/root/.pyenv`), that directory is covered by a read-only tmpfs and
  only the interpreter's prefix is bound back into it (an interpreter under /tmp, /run, /var/tmp or /dev/shm is
  refused: those are replaced).
- Not root: the same namespaces inside a user namespace (the process keeps the service user's identity outside,
  so it can write what that user can outside its mounts).
- `isolation="none"` (explicit operator opt-in for machines without namespaces): resource limits and a stripped
  environment only.

Always: a wall-clock timeout that kills the whole run (its cgroup where there is one, its process group, and with
its first process the PID namespace), RLIMIT_CPU,
RLIMIT_AS, RLIMIT_FSIZE and RLIMIT_NPROC, an environment with only PATH, HOME, LANG, PYTHONDONTWRITEBYTECODE,
PYTHONPATH and PYTEST_DISABLE_PLUGIN_AUTOLOAD, and captured, truncated output. RLIMIT_NPROC counts every process of
the uid, so sandboxes running at once share it.

A run dies with the server, kill -9 included, and a server sweeps the runs its previous incarnation left at start
(orchestrator/reaper.py: parent-death signals at every layer, a cgroup per run where cgroup v2 allows it).

pytest is one of the service's own runtime dependencies, so the interpreter running the server can always run
the tests; a run that could not start, collect or find any test says why in `not_run_reason`, apart from a run
whose tests failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import time
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import reaper

logger = logging.getLogger(__name__)

__all__ = ["SandboxError", "SandboxLimits", "TestRunReport", "run_tests", "sweep_leftovers"]

# Where the project appears inside the sandbox: on the private tmpfs that replaces /tmp.
_INSIDE_PROJECT = "/tmp/sandbox"
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_MAX_FILES = 500
_MAX_TOTAL_BYTES = 8 * 1024 * 1024
# Host directories a process could write to, or reach host services through (Unix sockets in /run).
_COVERED_DIRS = ("/run", "/var/tmp", "/dev/shm")
_HEAD_CHARS = 2_000


class SandboxError(Exception):
    """The sandbox cannot run the files: isolation is unavailable or the files are unsafe to write."""


class SandboxLimits(BaseModel):
    """Resource limits and isolation of one sandboxed test run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(default=120.0, gt=0, description="Default wall-clock limit of one test run.")
    cpu_seconds: int = Field(default=60, gt=0, description="RLIMIT_CPU of each process.")
    memory_bytes: int = Field(default=1024**3, gt=0, description="RLIMIT_AS (address space) of each process.")
    file_size_bytes: int = Field(default=16 * 1024**2, gt=0, description="RLIMIT_FSIZE: largest file it may write.")
    max_processes: int = Field(default=64, gt=0, description="RLIMIT_NPROC of the sandbox user.")
    tmpfs_bytes: int = Field(default=64 * 1024**2, gt=0, description="Size of the private /tmp with the project.")
    output_chars: int = Field(default=20_000, ge=1_000, description="Captured output kept (head and tail).")
    python: str | None = Field(
        default=None, description="Interpreter with pytest installed; default: the one running the server."
    )
    run_as_uid: int = Field(default=65534, ge=1, description="Unprivileged uid tests run as when started as root.")
    run_as_gid: int = Field(default=65534, ge=1, description="Unprivileged gid tests run as when started as root.")
    isolation: Literal["auto", "none"] = Field(
        default="auto",
        description="auto: namespaces, or refuse to run; none: resource limits and environment only (unsafe).",
    )
    work_dir: str | None = Field(default=None, description="Where temporary project directories are created.")
    owner: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._:-]{0,160}$",
        description="Who starts the runs (the server sets its replica id and data directory): runs live in a "
        "directory and cgroup of this name, which the next start of the same owner sweeps.",
    )
    hidden_dirs: tuple[str, ...] = Field(
        default=(),
        description="Directories the tests must not see (the data directory, key files): covered with an empty "
        "read-only tmpfs inside the sandbox.",
    )


class TestRunReport(BaseModel):
    """The outcome of one sandboxed pytest run."""

    __test__ = False  # not a pytest test class, whatever its name

    model_config = ConfigDict(frozen=True)

    passed: int
    failed: int
    errors: int
    success: bool
    output: str
    exit_code: int | None
    timed_out: bool
    duration_s: float
    isolation: str
    # Why no test ran (collection or usage error, nothing collected, no runner); empty when the tests ran.
    not_run_reason: str = ""


def _validated_files(files: list[dict[str, Any]]) -> list[tuple[PurePosixPath, str]]:
    if len(files) > _MAX_FILES:
        raise SandboxError(f"too many files for the sandbox ({len(files)} > {_MAX_FILES})")
    result: dict[PurePosixPath, str] = {}
    total = 0
    for item in files:
        raw_path, content = item.get("path"), item.get("content")
        if not isinstance(raw_path, str) or not isinstance(content, str):
            raise SandboxError("every file needs a string 'path' and a string 'content'")
        path = PurePosixPath(raw_path.strip())
        if (
            not raw_path.strip()
            or path.is_absolute()
            or "\\" in raw_path
            or "\x00" in raw_path
            or any(part in ("", ".", "..") for part in path.parts)
        ):
            raise SandboxError(f"unsafe file path {raw_path!r}: use a relative path inside the project")
        total += len(content.encode())
        if total > _MAX_TOTAL_BYTES:
            raise SandboxError(f"the files are larger than the sandbox accepts ({_MAX_TOTAL_BYTES} bytes)")
        result[path] = content
    return list(result.items())


def _write_project(project: Path, files: list[tuple[PurePosixPath, str]], owner: tuple[int, int] | None) -> None:
    project.mkdir(mode=0o755)
    for rel, content in files:
        target = project.joinpath(*rel.parts)
        for parent in reversed(target.relative_to(project).parents):
            directory = project / parent
            if not directory.exists():
                directory.mkdir(mode=0o755)
        if target.exists():  # a file and a directory with the same name
            raise SandboxError(f"file path {rel} collides with a directory")
        target.write_text(content, encoding="utf-8")
        target.chmod(0o644)
    if owner is not None:
        uid, gid = owner
        for root, dirs, names in os.walk(project):
            os.chown(root, uid, gid)
            for name in [*dirs, *names]:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _hidden_ancestor(path: str) -> str | None:
    """The highest directory on `path` that other users cannot traverse, or None."""
    current = Path("/")
    for part in Path(path).parts[1:]:
        current = current / part
        try:
            mode = current.stat().st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return str(current)
    return None


def _interpreter_prefixes(python: str) -> list[str]:
    """Directories the sandbox user must reach to start `python`: its venv and its installation."""
    prefixes = {os.path.dirname(os.path.dirname(os.path.abspath(python)))}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(python))))
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        prefixes.update({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)})
    return sorted(prefixes)


def _mount_script(
    base: Path,
    limits: SandboxLimits,
    exposures: list[str],
    command: list[str],
    tmp_prefixes: list[str],
    interpreter: list[str],
) -> str:
    """The shell script run as root inside the new namespaces: arrange mounts, then exec `command`.

    Only binds and fresh tmpfs mounts, no `mount --move`: util-linux's move reports a failure inside a user
    namespace (the move happens, then a follow-up call is refused).
    """
    q = shlex.quote
    newtmp = base / "newtmp"
    lines = ["set -eu", "mount --make-rprivate /"]
    # The interpreter's prefix under a directory the sandbox user cannot traverse (e.g. /root/.pyenv/...): stage
    # a bind of it, cover the directory with an empty tmpfs (hiding everything else in it), bind it back.
    covered: dict[str, list[tuple[Path, str]]] = {}
    for index, prefix in enumerate(exposures):
        stage = base / f"stage{index}"
        lines += [f"mkdir {q(str(stage))}", f"mount --bind {q(prefix)} {q(str(stage))}"]
        ancestor = _hidden_ancestor(prefix)
        assert ancestor is not None
        covered.setdefault(ancestor, []).append((stage, prefix))
    for ancestor, items in covered.items():
        lines.append(f"mount -t tmpfs -o mode=755,nosuid,nodev,size=1m sandbox-cover {q(ancestor)}")
        for stage, prefix in items:
            lines += [f"mkdir -p {q(prefix)}", f"mount --bind {q(str(stage))} {q(prefix)}"]
        lines.append(f"mount -o remount,ro,bind {q(ancestor)}")
    # A private, size-limited /tmp holding the project at /tmp/sandbox.
    lines += [
        f"mount -t tmpfs -o mode=1777,nosuid,nodev,size={limits.tmpfs_bytes} sandbox-tmp {q(str(newtmp))}",
        f"mkdir {q(str(newtmp / 'sandbox'))}",
        f"mount --bind {q(str(base / 'project'))} {q(str(newtmp / 'sandbox'))}",
    ]
    # An interpreter (a venv, e.g. a CI checkout) under /tmp is bound read-only into the private /tmp at the
    # same path; the recursive bind below carries it along.
    for prefix in tmp_prefixes:
        inside = newtmp / Path(prefix).relative_to("/tmp")
        lines += [
            f"mkdir -p {q(str(inside))}",
            f"mount --bind {q(prefix)} {q(str(inside))}",
            f"mount -o remount,ro,bind {q(str(inside))}",
        ]
    lines.append(f"mount --rbind {q(str(newtmp))} /tmp")
    for directory in (*_COVERED_DIRS, *_hideable(limits.hidden_dirs, [*interpreter, *tmp_prefixes, str(base)])):
        if os.path.isdir(directory) and not os.path.islink(directory):
            lines.append(f"mount -t tmpfs -o ro,mode=755,nosuid,nodev,size=4k sandbox-empty {q(directory)}")
    lines.append(f"cd {_INSIDE_PROJECT}")
    lines.append("exec " + " ".join(q(arg) for arg in command))
    return "\n".join(lines)


def _hideable(dirs: tuple[str, ...], keep: list[str]) -> list[str]:
    """The configured hidden directories that can be covered: not under /tmp (replaced anyway), and not holding
    the interpreter or the sandbox's own files (`keep`)."""
    hideable = []
    for directory in dirs:
        path = os.path.realpath(directory)
        if path == "/tmp" or path.startswith("/tmp/") or path == "/":
            continue
        if any(k == path or k.startswith(path + "/") for k in keep):
            continue
        hideable.append(path)
    return hideable


def _prlimit(limits: SandboxLimits) -> list[str]:
    return [
        "prlimit",
        f"--cpu={limits.cpu_seconds}",
        f"--as={limits.memory_bytes}",
        f"--fsize={limits.file_size_bytes}",
        f"--nproc={limits.max_processes}",
        "--core=0",
        "--",
    ]


def _env_args(home: str) -> list[str]:
    return [
        "env",
        "-i",
        f"PATH={_SAFE_PATH}",
        f"HOME={home}",
        "LANG=C.UTF-8",
        "PYTHONDONTWRITEBYTECODE=1",
        f"PYTHONPATH={home}",
        # Plain pytest, as the tester's prompt promises: without it the plugins of whatever is installed beside
        # the server (the dev extras' pytest-asyncio, hypothesis, schemathesis...) would load into every run and
        # make the same tests behave differently from one installation to the next.
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1",
    ]


def _pytest_args(python: str) -> list[str]:
    # The deprecation filter hides plugin configuration nags (pytest-asyncio's) that drown the summary.
    return [
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no",
        "-W", "ignore::pytest.PytestDeprecationWarning",
    ]  # fmt: skip


_UNSHARE_FLAGS = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
_probe_cache: dict[str, str | None] = {}


async def _probe(flags: list[str]) -> str | None:
    """None when `unshare` with these flags works here, else why not."""
    key = " ".join(flags)
    if key in _probe_cache:
        return _probe_cache[key]
    if shutil.which("unshare") is None or shutil.which("prlimit") is None:
        reason: str | None = "util-linux `unshare` and `prlimit` are not installed"
    else:
        proc = await asyncio.create_subprocess_exec(
            "unshare",
            *flags,
            "--",
            "true",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        reason = None if proc.returncode == 0 else err.decode(errors="replace").strip()[:300]
    _probe_cache[key] = reason
    return reason


async def _plan(base: Path, limits: SandboxLimits, python: str) -> tuple[list[str], tuple[int, int] | None, str, str]:
    """The command to start, the owner of the project files, the cwd and the isolation label."""
    if limits.isolation == "none":
        project = str(base / "project")
        command = [*_prlimit(limits), *_env_args(project), *_pytest_args(python)]
        return command, None, project, "none (resource limits and environment only)"
    for prefix in _interpreter_prefixes(python):
        if any(prefix == d or prefix.startswith(d + "/") for d in _COVERED_DIRS) or prefix == "/tmp":
            raise SandboxError(
                f"the sandbox interpreter lives under {prefix}, which the sandbox replaces with an empty "
                "directory: install it elsewhere or set the sandbox python setting"
            )
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            raise SandboxError("the sandbox needs util-linux `setpriv` to drop privileges")
        flags = list(_UNSHARE_FLAGS)
        reason = await _probe(flags)
        owner: tuple[int, int] | None = (limits.run_as_uid, limits.run_as_gid)
        exposures = [p for p in _interpreter_prefixes(python) if _hidden_ancestor(p) is not None]
        inner = [
            *_prlimit(limits),
            "setpriv",
            f"--reuid={limits.run_as_uid}",
            f"--regid={limits.run_as_gid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            # The uid change above clears the parent-death signal `unshare --kill-child` gave this process (the
            # namespace's first): set it again, or the namespace would outlive a killed `unshare`.
            "--pdeathsig=KILL",
            "--",
            *_env_args(_INSIDE_PROJECT),
            *_pytest_args(python),
        ]
        label = f"namespaces (net, mount, pid) as uid {limits.run_as_uid}"
    else:
        flags = ["--user", "--map-root-user", *_UNSHARE_FLAGS]
        reason = await _probe(flags)
        owner, exposures = None, []
        inner = [*_prlimit(limits), *_env_args(_INSIDE_PROJECT), *_pytest_args(python)]
        label = "user namespace (net, mount, pid) as the service user"
    if reason is not None:
        raise SandboxError(
            f"cannot isolate test runs on this machine (unshare: {reason}); "
            "an operator may set sandbox isolation to 'none' to run them without isolation"
        )
    tmp_prefixes = [p for p in _interpreter_prefixes(python) if p.startswith("/tmp/")]
    script = _mount_script(base, limits, exposures, inner, tmp_prefixes, _interpreter_prefixes(python))
    return ["unshare", *flags, "--", "/bin/sh", "-c", script], owner, str(base), label


class _Capture:
    """Keeps the first and the last characters of a stream that may be huge."""

    def __init__(self, limit: int) -> None:
        self._head_limit = min(_HEAD_CHARS, limit // 4)
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= self._tail_limit:
            self._dropped += len(self._tail[0])
            self._tail_size -= len(self._tail.popleft())

    def text(self) -> str:
        tail = b"".join(self._tail)
        if self._tail_size > self._tail_limit:
            self._dropped += self._tail_size - self._tail_limit
            tail = tail[-self._tail_limit :]
        head = self._head.decode(errors="replace")
        if self._dropped:
            return f"{head}\n[... {self._dropped} bytes of output omitted ...]\n{tail.decode(errors='replace')}"
        return head + tail.decode(errors="replace")


_SUMMARY_LINE = re.compile(r"\bin [0-9.]+s\b")
_SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|errors?)\b")


def parse_pytest_summary(output: str) -> tuple[int, int, int]:
    """(passed, failed, errors) from pytest's final summary line, zeros when there is none."""
    for line in reversed(output.splitlines()):
        if _SUMMARY_LINE.search(line) and (counts := _SUMMARY_COUNT.findall(line)):
            found = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in counts}
            return found.get("passed", 0), found.get("failed", 0), found.get("error", 0)
    return 0, 0, 0


_SKIPPED = re.compile(r"(\d+) skipped\b")
# pytest's "E   ModuleNotFoundError: No module named 'x'" line under a collection error.
_EXCEPTION_LINE = re.compile(r"E\s+((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*)")
# pytest's exit codes that mean no test ran (https://docs.pytest.org/en/stable/reference/exit-codes.html).
_NOT_RUN_EXIT = {
    2: "errors while collecting the tests",
    3: "pytest stopped on an internal error",
    4: "pytest was called wrongly",
    5: "no tests were collected",
}
# env(1) when it cannot start the interpreter: not executable, not found.
_NO_INTERPRETER_EXIT = (126, 127)
_REASON_CHARS = 300


def _not_run_reason(exit_code: int | None, output: str, passed: int, failed: int, errors: int) -> str:
    """Why no test ran, from pytest's exit code and output; "" when tests ran (whether they passed or not)."""
    if exit_code is None or passed + failed > 0:  # timed out (ran or hung until killed), or some test ran
        return ""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if exit_code in _NOT_RUN_EXIT:
        reason = _NOT_RUN_EXIT[exit_code]
        # The line that says what went wrong: the usage error, the internal error, or for collection errors the
        # first file and its exception ("E   SyntaxError: ...", not the "E     File ..." lines before it).
        markers = {3: ("INTERNALERROR>",), 4: ("ERROR:", "error:")}.get(exit_code)
        detail = next((line for line in lines if line.startswith(markers)), "") if markers else ""
        if exit_code == 2:
            where = next((line.removeprefix("ERROR ") for line in lines if line.startswith("ERROR ")), "")
            exception = next((m.group(1) for line in lines if (m := _EXCEPTION_LINE.match(line))), "")
            detail = ": ".join(part for part in (where, exception) if part)
        return f"{reason} ({detail})"[:_REASON_CHARS] if detail else reason
    if exit_code == 0:
        skipped = next((int(m.group(1)) for line in reversed(lines) if (m := _SKIPPED.search(line))), 0)
        if skipped == 1:
            return "the one collected test was skipped"
        return f"all {skipped} collected tests were skipped" if skipped else "no test ran"
    if (exit_code == 1 and errors == 0) or exit_code in _NO_INTERPRETER_EXIT:
        # pytest did not start: e.g. "python: No module named pytest" (exit 1), or no interpreter (126, 127).
        last = lines[-1] if lines else "no output"
        return f"the test runner did not start (exit code {exit_code}): {last}"[:_REASON_CHARS]
    return ""


def sweep_leftovers(limits: SandboxLimits) -> reaper.SweepReport:
    """Kills and removes the runs a previous incarnation of `limits.owner` left (blocking; call it at start,
    before any run)."""
    return reaper.sweep(limits.owner, limits.work_dir)


async def run_tests(files: list[dict[str, Any]], *, timeout_s: float, limits: SandboxLimits) -> TestRunReport:
    """Write `files` to a fresh directory and run `python -m pytest -q` there in the sandbox.

    Raises SandboxError when the files are unsafe or the machine cannot isolate the run. Cancelling the caller
    kills the run.
    """
    validated = _validated_files(files)
    python = limits.python or sys.executable
    scope = reaper.open_run(limits.owner, limits.work_dir)
    base = scope.base
    started = time.monotonic()
    try:
        (base / "newtmp").mkdir()
        command, owner, cwd, label = await _plan(base, limits, python)
        _write_project(base / "project", validated, owner)
        capture = _Capture(limits.output_chars)
        proc = await asyncio.create_subprocess_exec(
            *scope.wrap(command),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
            env={"PATH": _SAFE_PATH},
        )
        scope.started(proc.pid)
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    capture.feed(chunk)
                await proc.wait()
        except TimeoutError:
            timed_out = True
            scope.kill(proc.pid)
            await proc.wait()
        except BaseException:  # cancellation included: never leave the run behind, then propagate
            scope.kill(proc.pid)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(proc.wait(), 5)
            raise
        output = capture.text()
        passed, failed, errors = parse_pytest_summary(output)
        exit_code = None if timed_out else proc.returncode
        not_run = _not_run_reason(exit_code, output, passed, failed, errors)
        if timed_out:
            output += f"\n[sandbox: killed after the {timeout_s:g}s time limit]"
            errors = max(errors, 1)
        elif not not_run and exit_code not in (0, 1):
            # Ran, then crashed or was killed (a resource limit) before or after its summary.
            output += f"\n[sandbox: the test run ended abnormally with exit code {exit_code}]"
            errors = max(errors, 1)
        elif errors == 0 and exit_code not in (0, 5) and passed + failed == 0:
            errors = 1  # collection or usage error, or no runner: the run is not clean, and says why
        success = not timed_out and exit_code == 0 and failed == 0 and errors == 0 and passed > 0
        return TestRunReport(
            passed=passed,
            failed=failed,
            errors=errors,
            success=success,
            output=output,
            exit_code=exit_code,
            timed_out=timed_out,
            duration_s=round(time.monotonic() - started, 3),
            isolation=label,
            not_run_reason=not_run,
        )
    finally:
        scope.close()

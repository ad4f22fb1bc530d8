"""Keeps sandboxed test runs from outliving the server that started them, and sweeps what a killed one left.

Three layers, so that a kill -9 of the server leaves nothing running:

- A parent-death signal at every exec that needs one. `setpriv --pdeathsig KILL` in front of `unshare` makes the
  kernel kill `unshare` when the server dies; `unshare --kill-child` does the same for the PID namespace's first
  process, and the kernel kills the whole namespace when that process dies. A credential change clears the
  signal, so the `setpriv` that drops to the sandbox user sets it again after the change (checked on util-linux
  2.38: an outer `--pdeathsig` does not survive an inner `--reuid`). The signal follows the THREAD that started
  the child: runs must be started from a thread that lives as long as they do (the event loop's).
- A cgroup per run, where cgroup v2 is mounted and the server's own cgroup is writable (root, or delegated to the
  service user): `cgroup.kill` stops every process of the run, also one that left the session or the namespace's
  reach (a test that daemonizes under `isolation="none"`). Elsewhere, runs are found by their session id.
- A sweep at start: the runs of a previous incarnation of the same owner (its replica id and data directory) are
  killed, by cgroup or by session, and their temporary directories removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["RunScope", "SweepReport", "open_run", "owner_root", "pdeathsig_prefix", "sweep"]

_MARKER = "sandbox-run.json"
_CGROUP_PREFIX = "orchestrator-sandbox."
_ROOT_PREFIX = "orchestrator-sandbox-"
# How long a killed cgroup may take to empty before it is left for the next sweep.
_EMPTY_WAIT_SECONDS = 5.0
_cgroup_parents: dict[str, Path | None] = {}  # per owner: its cgroup, or None once found unusable


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL --`, or nothing where util-linux `setpriv` is missing (then only the sweep at the
    next start catches a run whose server was killed)."""
    if shutil.which("setpriv") is None:
        return []
    return ["setpriv", "--pdeathsig", "KILL", "--"]


def owner_root(owner: str, work_dir: str | None) -> Path:
    """The directory holding one owner's run directories: swept as a whole at start."""
    return Path(work_dir or tempfile.gettempdir()) / f"{_ROOT_PREFIX}{owner or 'default'}"


def _own_cgroup_dir() -> Path | None:
    """This process's cgroup v2 directory, or None without a cgroup v2 mount (e.g. cgroup v1 only)."""
    try:
        own = next(
            line[3:].strip() for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
        )
        mount = None
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, _, rest = line.partition(" - ")
            if rest.split(" ", 1)[0] == "cgroup2":
                mount = fields.split()[4]
                break
    except (OSError, StopIteration):
        return None
    if mount is None:
        return None
    return Path(mount) / own.lstrip("/")


def _owner_cgroup(owner: str) -> Path | None:
    """Where the owner's cgroup is (or would be), or None without cgroup v2."""
    own = _own_cgroup_dir()
    return None if own is None else own / f"{_CGROUP_PREFIX}{owner or 'default'}"


def _cgroup_parent(owner: str) -> Path | None:
    """The owner's cgroup, created on first use, under which each run gets its own; None when cgroups cannot be
    used here (decided once per process and owner, and logged once)."""
    key = owner or "default"
    if _cgroup_parents.get(key, False) is None:
        return None
    candidate = _owner_cgroup(owner)
    why = "no cgroup v2 mount"
    if candidate is not None:
        try:
            candidate.mkdir(exist_ok=True)
            # Moving a process needs write access to cgroup.procs of the common ancestor (ours); cgroup.kill
            # needs Linux 5.14.
            if (candidate / "cgroup.kill").exists() and os.access(candidate.parent / "cgroup.procs", os.W_OK):
                _cgroup_parents[key] = candidate
                return candidate
            why = "cgroup.kill missing or the server's cgroup is not writable"
            with contextlib.suppress(OSError):
                candidate.rmdir()
        except OSError as exc:
            why = f"cannot create a cgroup under {candidate.parent}: {exc.strerror or exc}"
    logger.info("sandbox runs are contained by session id and parent-death signals only (%s)", why)
    _cgroup_parents[key] = None
    return None


def _remove_if_empty(cgroup: Path) -> None:
    """Removes an owner's cgroup that has no run left in it (a run starting meanwhile creates it again)."""
    with contextlib.suppress(OSError):
        cgroup.rmdir()


@dataclass
class RunScope:
    """One run's temporary directory and, where available, its cgroup."""

    base: Path
    cgroup: Path | None

    def wrap(self, command: list[str]) -> list[str]:
        """`command` started so that it dies with the server: a parent-death signal first, then (where there is
        a cgroup) the shell that moves itself into the run's cgroup before anything forks, then `command`."""
        prefix = pdeathsig_prefix()
        if self.cgroup is None:
            return [*prefix, *command]
        enter = 'echo $$ > "$0" && exec "$@"'
        return [*prefix, "/bin/sh", "-c", enter, str(self.cgroup / "cgroup.procs"), *command]

    def started(self, pid: int) -> None:
        """Records the run's session (its first process is the session leader) for a later sweep."""
        marker = {"session": pid, "boot_id": _boot_id(), "cgroup": str(self.cgroup or "")}
        (self.base / _MARKER).write_text(json.dumps(marker))

    def kill(self, pid: int) -> None:
        """Kills every process of the run: its cgroup, and its process group."""
        if self.cgroup is not None:
            _kill_cgroup(self.cgroup)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        """Removes the run's cgroup (killing anything left in it), then the owner's if no other run is in it, and
        the run's directory."""
        if self.cgroup is not None:
            _remove_cgroup(self.cgroup)
            _remove_if_empty(self.cgroup.parent)
        shutil.rmtree(self.base, ignore_errors=True)
        with contextlib.suppress(OSError):  # the owner's directory, once no run is left in it
            self.base.parent.rmdir()


def open_run(owner: str, work_dir: str | None) -> RunScope:
    root = owner_root(owner, work_dir)
    for attempt in range(3):  # the owner's directory may be removed, empty, by another run ending right now
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            base = Path(tempfile.mkdtemp(prefix="run-", dir=root))
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    parent = _cgroup_parent(owner)
    if parent is None:
        return RunScope(base=base, cgroup=None)
    cgroup = parent / base.name
    for _ in range(3):  # the owner's cgroup may be removed, empty, by another run ending right now
        try:
            parent.mkdir(exist_ok=True)
            cgroup.mkdir()
            return RunScope(base=base, cgroup=cgroup)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("cannot create the run's cgroup %s (%s); running it without one", cgroup, exc)
            break
    return RunScope(base=base, cgroup=None)


def _kill_cgroup(cgroup: Path) -> None:
    with contextlib.suppress(OSError):
        (cgroup / "cgroup.kill").write_text("1")


def _populated(cgroup: Path) -> bool:
    try:
        return "populated 1" in (cgroup / "cgroup.events").read_text()
    except OSError:
        return False


def _remove_cgroup(cgroup: Path) -> bool:
    """Kills what is left in the cgroup, waits (briefly) until it is empty, removes it; False if it stays."""
    if not cgroup.exists():
        return True
    _kill_cgroup(cgroup)
    deadline = time.monotonic() + _EMPTY_WAIT_SECONDS
    while _populated(cgroup) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        cgroup.rmdir()
        return True
    except OSError as exc:
        logger.warning("cannot remove the sandbox cgroup %s: %s", cgroup, exc)
        return False


def _session_members(session: int) -> list[int]:
    """Processes whose session id is `session`. Linux never reuses a pid as long as a session carries it as its
    id, so on the same boot a match is a process of that run."""
    members: list[int] = []
    if not Path("/proc").is_dir():
        return members
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces and parentheses): state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[3] == str(session):
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class SweepReport:
    processes_killed: int
    directories_removed: int
    cgroups_removed: int


def sweep(owner: str, work_dir: str | None) -> SweepReport:
    """Kills and removes the runs a previous incarnation of `owner` left behind. Call it before starting runs:
    it takes every run directory of the owner for a leftover. Blocking (it reads /proc and removes directories)."""
    boot = _boot_id()
    root = owner_root(owner, work_dir)
    runs = sorted(root.iterdir()) if root.is_dir() else []
    victims: set[int] = set()
    for base in runs:
        try:
            marker = json.loads((base / _MARKER).read_text())
        except (OSError, ValueError):
            marker = {}
        session = marker.get("session")
        if isinstance(session, int) and session > 1 and marker.get("boot_id") == boot:
            victims.update(_session_members(session))
    parent = _owner_cgroup(owner)  # looked at, never created: most starts have nothing to sweep
    cgroups = sorted(p for p in parent.iterdir() if p.is_dir()) if parent is not None and parent.is_dir() else []
    for cgroup in cgroups:
        with contextlib.suppress(OSError, ValueError):
            victims.update(int(pid) for pid in (cgroup / "cgroup.procs").read_text().split())
    killed = 0
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    removed_cgroups = sum(_remove_cgroup(cgroup) for cgroup in cgroups)
    if parent is not None and parent.is_dir():
        _remove_if_empty(parent)
    removed = 0
    for base in runs:
        shutil.rmtree(base, ignore_errors=True)
        removed += not base.exists()
    with contextlib.suppress(OSError):
        root.rmdir()
    if killed or removed or removed_cgroups:
        logger.warning(
            "swept sandbox runs a previous incarnation left: %d processes killed, %d directories and %d cgroups "
            "removed",
            killed,
            removed,
            removed_cgroups,
        )
    return SweepReport(processes_killed=killed, directories_removed=removed, cgroups_removed=removed_cgroups)

"""Measures each peer on this machine with the load shapes of bench/__main__.py's scenarios, each server and
each load in its own process, and returns the figures; `bench.__main__.peers` measures this service beside them
and turns both into rows.

Each `measure_*` returns a dict with whichever of these it got before anything failed, and "error" if something
did: lone and throughput (bench.load's `workflows` fields), reads ({endpoint: wrk result}), events (lag stats, or
"na" with the reason) and kill ({"at_kill", "after", "done", "rerun"}).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from bench.peers import setup

ROOT = Path(__file__).resolve().parent.parent.parent
KILL_COUNT = 40
KILL_DELAY = 0.5  # seconds per phase, as kill() gives our model, so there is work in flight when it dies
EVENTS_DELAY = 1.0  # seconds per phase, as events() gives our model


class Counts(TypedDict):
    lone: int
    throughput: int
    settle: float  # how long the kill run waits after the restart for runs to finish


def counts(quick: bool) -> Counts:
    return {"lone": 10, "throughput": 60, "settle": 60.0} if quick else {"lone": 20, "throughput": 300, "settle": 120.0}


Reads = Callable[[str], "dict[str, float] | None"]


class PeerProcess:
    """A peer's server or runner in its own process group, so kill -9 takes its children with it."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.argv, self.cwd, self.env, self.log = argv, cwd, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def tail(self) -> str:
        return _strip_ansi(self.log.read_text(errors="replace"))[-400:] if self.log.exists() else ""

    def kill9(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_ready(server: PeerProcess, url: Callable[[], str | None], timeout: float) -> str:
    """Waits for `url()` (None while unknown) to answer 200; returns it. Raises with the log's tail on failure."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if server.exited():
            raise RuntimeError(f"exited at start: {server.tail()}")
        found = url()
        if found and _get_ok(found):
            return found
        time.sleep(0.1)
    raise RuntimeError(f"not ready after {timeout:.0f} s: {server.tail()}")


def _load(python: Path, module: str, *args: str, env: dict[str, str], timeout: float = 900) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), "-m", f"bench.peers.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {args[0]} failed: {result.stderr.strip()[-400:]}")
    return dict(json.loads(lines[-1]))


def _calls(path: Path) -> Counter[tuple[str, ...]]:
    return Counter(tuple(line.split()) for line in path.read_text().splitlines()) if path.exists() else Counter()


# LangGraph --------------------------------------------------------------------------------------------------------


class _PeerServer:
    """A peer's server process: killed with kill -9 in the crash scenario, stopped politely otherwise."""

    process: PeerProcess | None = None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill9()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class LangGraphServer(_PeerServer):
    """`langgraph dev` (in-memory runtime) serving the no-op graph from a directory of its own: the runtime
    saves its state under `.langgraph_api/` there, which is what a restart after kill -9 reloads."""

    def __init__(self, python: Path, app: Path, jobs: int, env: dict[str, str]) -> None:
        self.python, self.app, self.jobs, self.env = python, app, jobs, env
        self.url = ""
        self.process: PeerProcess | None = None

    def start(self) -> LangGraphServer:
        if not (self.app / "langgraph.json").exists():
            self.app.mkdir(parents=True)
            shutil.copy(Path(__file__).with_name("langgraph_graph.py"), self.app / "graph.py")
            (self.app / "langgraph.json").write_text(
                json.dumps({"dependencies": ["."], "graphs": {"noop": "./graph.py:graph"}})
            )
        log = self.app.parent / f"{self.app.name}.log"
        offset = log.stat().st_size if log.exists() else 0
        # --no-reload: the file watcher would restart the server when the runtime writes its own state files.
        argv = [str(self.python.parent / "langgraph"), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
        argv += ["--port", str(_free_port()), "--n-jobs-per-worker", str(self.jobs)]
        self.process = PeerProcess(argv, self.app, self.env, log).start()

        def url() -> str | None:  # it silently moves to another port when the one asked for is taken
            with log.open("rb") as f:
                f.seek(offset)
                match = re.search(r"API: (http://127\.0\.0\.1:\d+)", _strip_ansi(f.read().decode(errors="replace")))
            return f"{match.group(1)}/ok" if match else None

        self.url = _wait_ready(self.process, url, 60).removesuffix("/ok")
        return self


def measure_langgraph(tmp: Path, quick: bool, reads: Reads, cache: Path) -> dict[str, Any]:
    n = counts(quick)
    out: dict[str, Any] = {}
    try:
        python = setup.ensure("langgraph", cache)
        env = setup.env()
        server = LangGraphServer(python, tmp / "langgraph", 10, env).start()
        out["startup"] = "ok"
        try:

            def lg(*args: str, timeout: float = 900) -> dict[str, Any]:
                return _load(python, "langgraph_load", *args, "--url", server.url, env=env, timeout=timeout)

            lg("runs", "--count", "5")  # warm-up, as engine() warms ours
            out["lone"] = lg("runs", "--count", str(n["lone"]))
            out["throughput"] = lg("runs", "--count", str(n["throughput"]), "--concurrency", "20")
            seeded = lg("seed")
            thread, run = seeded["thread_id"], seeded["run_id"]
            out["reads"] = {
                "GET run": reads(f"{server.url}/threads/{thread}/runs/{run}"),
                "GET thread state": reads(f"{server.url}/threads/{thread}/state"),
            }
            out["events"] = lg("stream", "--delay", str(EVENTS_DELAY))
        finally:
            server.stop()
        out["kill"] = _kill_langgraph(tmp, python, n["settle"])
    except Exception as exc:  # the figures so far still count; the row says what broke
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _kill_langgraph(tmp: Path, python: Path, settle: float) -> dict[str, Any]:
    calls = tmp / "langgraph-kill-calls.log"
    env = setup.env(BENCH_CALLS_FILE=str(calls))
    # 20 jobs, as ours runs 20 workflows at a time in kill(): 20 running and 20 waiting when it dies.
    server = LangGraphServer(python, tmp / "langgraph-kill", 20, env).start()

    def lg(*args: str) -> dict[str, Any]:
        return _load(python, "langgraph_load", *args, "--url", server.url, env=env)

    ids = tmp / "langgraph-kill-ids.json"
    try:
        ids.write_text(json.dumps(lg("submit", "--count", str(KILL_COUNT), "--delay", str(KILL_DELAY))["ids"]))
        lg("states", "--ids", str(ids), "--until", "running", "--wait", "30")
        time.sleep(2.5)
        at_kill = lg("states", "--ids", str(ids))["states"]
        server.kill9()
        done = set(_calls(calls))
        server.start()
        after = lg("states", "--ids", str(ids), "--wait", str(settle))["states"]
    finally:
        server.stop()
    runs = _calls(calls)
    return {
        "at_kill": at_kill,
        "after": after,
        "finished": after.get("success", 0),
        "lost": after.get("lost", 0),
        "failed": sum(after.get(s, 0) for s in ("error", "timeout", "interrupted")),
        "stuck": after.get("pending", 0) + after.get("running", 0),
        "done": len(done),
        "rerun": sum(1 for key in done if runs[key] > 1),
    }


# Prefect ----------------------------------------------------------------------------------------------------------


class PrefectServer(_PeerServer):
    """`prefect server start` on SQLite in its own PREFECT_HOME, so a restart finds the same database."""

    def __init__(self, python: Path, home: Path, env: dict[str, str]) -> None:
        self.python, self.home = python, home
        self.port = _free_port()
        self.env = {**env, "PREFECT_HOME": str(home)}
        self.process: PeerProcess | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [str(self.python.parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = PeerProcess(argv, self.home, self.env, self.home.parent / f"{self.home.name}.log").start()
        _wait_ready(self.process, lambda: f"{self.api}/health", 120)
        return self

    def client_env(self, **extra: str) -> dict[str, str]:
        # Flow and task logs at WARNING: the INFO lines each run ships to the server are extra database writes
        # that this service does not make, so leaving them on would understate Prefect.
        return {**self.env, "PREFECT_API_URL": self.api, "PREFECT_LOGGING_LEVEL": "WARNING", **extra}


def measure_prefect(tmp: Path, quick: bool, reads: Reads, cache: Path) -> dict[str, Any]:
    n = counts(quick)
    out: dict[str, Any] = {}
    try:
        python = setup.ensure("prefect", cache)
        server = PrefectServer(python, tmp / "prefect", setup.env()).start()
        out["startup"] = "ok"
        try:
            env = server.client_env()

            def pf(*args: str) -> dict[str, Any]:
                return _load(python, "prefect_load", *args, env=env)

            pf("flows", "--count", "2")  # warm-up
            out["lone"] = pf("flows", "--count", str(n["lone"]))
            out["throughput"] = pf("flows", "--count", str(n["throughput"]), "--concurrency", "20")
            run = pf("seed")["flow_run_id"]
            out["reads"] = {"GET flow run": reads(f"{server.api}/flow_runs/{run}")}
            out["events"] = pf("events", "--delay", str(EVENTS_DELAY))
        finally:
            server.stop()
        out["kill"] = _kill_prefect(tmp, python, n["settle"])
    except Exception as exc:  # the figures so far still count; the row says what broke
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _kill_prefect(tmp: Path, python: Path, settle: float) -> dict[str, Any]:
    """Deployments served by `flow.serve(limit=20)`: the one Prefect set-up with a queue (runs wait SCHEDULED for
    the runner), so 20 run and 20 wait, as in ours. The server and the runner (with each run's child process)
    die together, as our one process does, and both are started again."""
    calls = tmp / "prefect-kill-calls.log"
    server = PrefectServer(python, tmp / "prefect-kill", setup.env()).start()
    env = server.client_env(BENCH_CALLS_FILE=str(calls))
    runner = PeerProcess(
        [str(python), "-m", "bench.peers.prefect_load", "serve", "--limit", "20"], ROOT, env, tmp / "prefect-runner.log"
    )

    def pf(*args: str) -> dict[str, Any]:
        return _load(python, "prefect_load", *args, env=env)

    ids = tmp / "prefect-kill-ids.json"
    try:
        runner.start()
        ids.write_text(json.dumps(pf("submit", "--count", str(KILL_COUNT), "--delay", str(KILL_DELAY))["ids"]))
        pf("states", "--ids", str(ids), "--until", "running", "--wait", "60")
        time.sleep(2.5)
        at_kill = pf("states", "--ids", str(ids))["states"]
        runner.kill9()
        server.kill9()
        done = set(_calls(calls))
        server.start()
        runner.start()
        after = pf("states", "--ids", str(ids), "--wait", str(settle))["states"]
    finally:
        runner.stop()
        server.stop()
    runs = _calls(calls)
    return {
        "at_kill": at_kill,
        "after": after,
        "finished": after.get("COMPLETED", 0),
        "lost": after.get("LOST", 0),
        "failed": sum(after.get(s, 0) for s in ("FAILED", "CRASHED", "CANCELLED")),
        "stuck": sum(v for s, v in after.items() if s not in ("COMPLETED", "LOST", "FAILED", "CRASHED", "CANCELLED")),
        "done": len(done),
        "rerun": sum(1 for key in done if runs[key] > 1),
    }


MEASURES = {"LangGraph": measure_langgraph, "Prefect": measure_prefect}

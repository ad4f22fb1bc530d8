"""`orchestrator serve` as an operator runs it: two instances share a host, and a start-up that cannot succeed says
why in one line on stderr and exits non-zero, with no traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.envoy, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
# Default settings but for the ports the operator of a second instance must pick anyway, the data directory, and
# authentication (on by default, with no default key).
BASE_ENV = {"PATH": os.environ["PATH"], "ORCHESTRATOR_AUTH__ENABLED": "false", "ORCHESTRATOR_LOG_FORMAT": "json"}


class Instance:
    """One `python -m service serve` process, its stderr in a file."""

    def __init__(self, data_dir: Path, *flags: str) -> None:
        data_dir.mkdir(parents=True)
        self.stderr_path = data_dir.parent / f"{data_dir.name}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--data-dir", str(data_dir), "--log-level", "INFO", *flags],
                cwd=ROOT,
                env=BASE_ENV,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ports(self, deadline_s: float = 60) -> dict[str, int]:
        """The ports of a started instance, from its "serving ..." log line; fails if it exits first."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for line in self.stderr.splitlines():
                if line.startswith("{") and (message := json.loads(line)["message"]).startswith("serving gRPC"):
                    grpc_port = int(message.split(" on ", 1)[1].split(",")[0].rsplit(":", 1)[1])
                    return {"grpc": grpc_port, "http": int(message.rsplit("REST on :", 1)[1].split()[0])}
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.stderr}"
            time.sleep(0.05)
        raise AssertionError(f"not serving after {deadline_s} s:\n{self.stderr}")

    def wait(self, timeout_s: float = 60) -> int:
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.stop()


def failure_line(instance: Instance) -> str:
    """The one line a failed start printed, after checking it is the only thing of its kind on stderr."""
    assert instance.wait() != 0
    err = instance.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("{")]  # log lines are JSON objects
    assert len(lines) == 1, err
    return lines[0]


def test_two_instances_with_default_settings_start_on_one_host(tmp_path: Path, instances: list[Instance]) -> None:
    # The gRPC, metrics and REST ports are the ones an operator gives a second instance; the rest (Envoy's admin
    # port among them) stays at its defaults.
    ports = ("--grpc-port", "0", "--metrics-port", "0", "--http-port", "0")
    instances += [Instance(tmp_path / "a", *ports), Instance(tmp_path / "b", *ports)]
    first, second = (instance.ports() for instance in instances)
    for served in (first, second):
        health = httpx.get(f"http://127.0.0.1:{served['http']}/health", timeout=10)
        assert health.status_code == 200, health.text
    assert first["http"] != second["http"]

    # A third given the first one's gRPC port fails, rather than sharing the port with it (SO_REUSEPORT).
    clash = Instance(tmp_path / "c", "--grpc-port", str(first["grpc"]), "--metrics-port", "0", "--no-envoy")
    instances.append(clash)
    assert failure_line(clash) == (
        f"cannot start: the gRPC port 127.0.0.1:{first['grpc']} is already in use (another instance?); "
        "choose another with --grpc-port, or 0 for a free one"
    )
    # And one given its REST port: Envoy must not share it either.
    clash = Instance(tmp_path / "d", "--grpc-port", "0", "--metrics-port", "0", "--http-port", str(first["http"]))
    instances.append(clash)
    line = failure_line(clash)
    assert line.startswith("cannot start: the Envoy sidecar did not start"), line
    assert f"cannot bind '127.0.0.1:{first['http']}': Address already in use" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """Bound, not listening: connections to it are refused at once."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield closed.getsockname()[1]


def test_a_taken_grpc_port_is_one_clear_line(tmp_path: Path, taken_port: int, instances: list[Instance]) -> None:
    instance = Instance(tmp_path / "a", "--grpc-port", str(taken_port), "--metrics-port", "0", "--no-envoy")
    instances.append(instance)
    assert failure_line(instance) == (
        f"cannot start: the gRPC port 127.0.0.1:{taken_port} is already in use (another instance?); "
        "choose another with --grpc-port, or 0 for a free one"
    )
    assert instance.process.returncode == 1


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(
            ("--metrics-port", "{port}", "--no-envoy"),
            "cannot start: the metrics port 127.0.0.1:{port} is already in use",
            id="metrics-port",
        ),
        pytest.param(
            ("--metrics-port", "0", "--http-port", "{port}"),
            "cannot start: the Envoy sidecar did not start",
            id="envoy",
        ),
        pytest.param(
            (
                "--metrics-port",
                "0",
                "--no-envoy",
                "--database-url",
                "postgresql://orchestrator:pw@127.0.0.1:{closed}/x",
            ),
            "cannot start: cannot use the database: connection failed",
            id="database",
        ),
    ],
)
def test_other_start_up_failures_are_one_clear_line(
    tmp_path: Path,
    taken_port: int,
    closed_port: int,
    instances: list[Instance],
    flags: tuple[str, ...],
    expected: str,
) -> None:
    ports = {"port": taken_port, "closed": closed_port}
    instance = Instance(tmp_path / "a", "--grpc-port", "0", *(f.format(**ports) for f in flags))
    instances.append(instance)
    line = failure_line(instance)
    assert line.startswith(expected.format(port=taken_port)), line
    assert ":pw@" not in line  # never the password


def test_bad_settings_are_one_clear_line_per_problem(tmp_path: Path, instances: list[Instance]) -> None:
    instance = Instance(tmp_path / "a", "--grpc-port", "70000", "--no-envoy")
    instances.append(instance)
    assert failure_line(instance).startswith("invalid setting grpc_port: ")
    assert instance.process.returncode == 2

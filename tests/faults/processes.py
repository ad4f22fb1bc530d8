"""Real processes the transport's fault tests start: `orchestrator serve` as an operator runs it (Envoy included),
restartable on the same data directory and ports, and another process holding a SQLite database's write lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on now. A restarted server must come back on the same ports, so these are
    picked once by the test (never hard-coded)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """`python -m service serve` with its stderr (JSON logs) in a file; `start` waits for its "serving" line."""

    def __init__(self, data_dir: Path, log: Path, *, env: dict[str, str], flags: list[str]) -> None:
        self.data_dir, self.log, self.env, self.flags = data_dir, log, env, flags
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--data-dir", str(self.data_dir), *self.flags],
                cwd=ROOT,
                env={"PATH": os.environ["PATH"], **self.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while not any(message.startswith("serving gRPC") for message in self.messages(offset)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"orchestrator serve did not start:\n{self.tail()}")
            time.sleep(0.05)
        return self

    def messages(self, offset: int = 0) -> list[str]:
        """The `message` of every JSON log line from byte `offset` on."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as file:
            file.seek(offset)
            lines = file.read().decode(errors="replace").splitlines()
        return [json.loads(line)["message"] for line in lines if line.startswith("{")]

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM, as an orchestrator does at a rolling restart, then the exit code of the graceful shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# A writer on another process: BEGIN EXCLUSIVE takes the database's write lock (readers of a WAL database go on),
# says so on stdout, and holds it until a line arrives on stdin.
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class SqliteWriteLock:
    """Another process holding the write lock of a SQLite file, as a backup tool or a stuck writer would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SqliteWriteLock:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until the lock is held (or the locker died)
        assert line.strip() == "locked", f"the locker did not take the lock: {line!r}"
        return self

    def release(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        assert process.stdin is not None
        try:
            process.stdin.write("\n")
            process.stdin.close()
            process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.release()

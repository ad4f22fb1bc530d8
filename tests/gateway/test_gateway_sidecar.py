"""EnvoySidecar as a process: port 0, several at once, clear start failures, stop, and dying with its parent."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from google.protobuf import descriptor_pb2

from gateway.config import GatewayOptions, build_envoy_config
from gateway.restface import DEFAULT_DESCRIPTOR
from gateway.sidecar import EnvoyError, EnvoySidecar

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


async def wait_dead(pid: int, seconds: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while alive(pid):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_two_sidecars_on_port_zero_and_json_503_without_upstream(metrics_port: int) -> None:
    options = GatewayOptions(
        grpc_port=closed_port(), metrics_port=metrics_port, live_port=closed_port(), listen_port=0, admin_port=0
    )
    async with EnvoySidecar(options) as first, EnvoySidecar(options) as second:
        assert len({first.http_port, second.http_port, first.admin_port, second.admin_port}) == 4
        for sidecar in (first, second):
            status, _ = await sidecar.admin_get("/ready")
            assert status == 200
            async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as http:
                down = await http.post("/execute-workflow", json={"requirements": "x", "workflow_type": "full"})
                metrics = await http.get("/metrics")
            # The gRPC service is down: Envoy's own 503, as the guide's JSON error.
            assert down.status_code == 503
            assert down.json()["error"] == "UNAVAILABLE"
            # Envoy's own text names hosts and TLS failures: clients get a fixed message, the access log the rest.
            assert down.json()["detail"] == "the service is unavailable; retry shortly"
            assert metrics.status_code == 200
        pids = [first.pid, second.pid]
    for pid in pids:
        assert pid is not None and await wait_dead(pid)


async def test_start_failure_raises_with_envoys_reason(tmp_path: Path, metrics_port: int) -> None:
    # A CA file Envoy cannot read: Envoy refuses the config at startup, and says why.
    missing = tmp_path / "no-such-ca.pem"
    options = GatewayOptions(
        grpc_port=closed_port(),
        metrics_port=metrics_port,
        live_port=closed_port(),
        listen_port=0,
        admin_port=0,
        upstream_ca_file=missing,
    )
    sidecar = EnvoySidecar(options, work_dir=tmp_path / "envoy")
    with pytest.raises(EnvoyError, match="exited with code") as caught:
        await sidecar.start()
    assert str(missing) in str(caught.value)
    assert sidecar.pid is None


def test_a_descriptor_without_the_service_is_refused_before_envoy_starts(tmp_path: Path, metrics_port: int) -> None:
    # The REST face is read from the descriptor set: without the service there is nothing to serve.
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DEFAULT_DESCRIPTOR.read_bytes())
    kept = [f for f in files.file if f.name.startswith("google/")]
    del files.file[:]
    files.file.extend(kept)
    descriptor = tmp_path / "other.pb"
    descriptor.write_bytes(files.SerializeToString())
    options = GatewayOptions(
        grpc_port=closed_port(), metrics_port=metrics_port, live_port=closed_port(), descriptor_path=descriptor
    )
    with pytest.raises(ValueError, match=r"orchestrator\.v1\.OrchestratorService"):
        build_envoy_config(options)


async def test_stop_ends_the_process_and_can_be_repeated(metrics_port: int) -> None:
    options = GatewayOptions(
        grpc_port=closed_port(), metrics_port=metrics_port, live_port=closed_port(), listen_port=0, admin_port=0
    )
    sidecar = EnvoySidecar(options)
    await sidecar.start()
    pid = sidecar.pid
    assert pid is not None and alive(pid)
    await sidecar.stop()
    await sidecar.stop()
    assert await wait_dead(pid)
    with pytest.raises(EnvoyError):
        _ = sidecar.url


async def test_envoy_dies_when_its_parent_dies_without_stopping_it(tmp_path: Path, metrics_port: int) -> None:
    script = f"""
import asyncio, os, sys
from pathlib import Path
from gateway.config import GatewayOptions, build_envoy_config
from gateway.sidecar import EnvoySidecar

async def main():
    options = GatewayOptions(
        grpc_port={closed_port()}, metrics_port={metrics_port}, live_port={closed_port()}, listen_port=0, admin_port=0
    )
    sidecar = EnvoySidecar(options, work_dir=Path({str(tmp_path)!r}))
    await sidecar.start()
    print(sidecar.pid, flush=True)
    os._exit(3)  # no stop(), no cleanup: as if the test process crashed

asyncio.run(main())
"""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 45)
    assert child.returncode == 3, stderr.decode()
    pid = int(stdout.split()[0])
    assert await wait_dead(pid), f"envoy {pid} outlived its parent"

"""Installs each peer into its own venv under a cache directory, from PyPI, and skips what is already there.

    python -m bench.peers.setup [--cache DIR] [--only langgraph,prefect]

The cache defaults to ~/.cache/orchestrator-bench-peers ($ORCHESTRATOR_BENCH_PEERS_CACHE overrides it). The
versions are the ones measured in shared/notes/peers.md; `env()` turns off every outbound call the peers make.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Pinned to what the notes measured, so the figures can be compared from one run to the next.
REQUIREMENTS = {
    "langgraph": [
        "langgraph-cli[inmem]==0.4.40",
        "langgraph-api==0.16.7",
        "langgraph-runtime-inmem==0.36.7",
        "langgraph",
        "langgraph-sdk",
    ],
    "prefect": ["prefect==3.9.1"],
}

QUIET = {
    # LangGraph: no CLI analytics, no version check, no LangSmith tracing.
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    # Prefect: no server analytics, no client telemetry.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def cache_dir(override: str | None = None) -> Path:
    default = Path.home() / ".cache" / "orchestrator-bench-peers"
    return Path(override or os.environ.get("ORCHESTRATOR_BENCH_PEERS_CACHE") or default)


def python(peer: str, cache: Path) -> Path:
    return cache / peer / "bin" / "python"


def env(**extra: str) -> dict[str, str]:
    """The environment every peer process runs with; PREFECT_HOME is passed per run, in a temp dir."""
    return {**os.environ, **QUIET, "PYTHONUNBUFFERED": "1", **extra}


def ensure(peer: str, cache: Path) -> Path:
    """Returns the peer's Python, creating its venv and installing its pinned packages unless already done."""
    venv = cache / peer
    marker = venv / ".bench-requirements"
    wanted = "\n".join(REQUIREMENTS[peer])
    if python(peer, cache).exists() and marker.exists() and marker.read_text() == wanted:
        return python(peer, cache)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as log:
        result = subprocess.run(
            [
                str(python(peer, cache)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                *REQUIREMENTS[peer],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env(),
            timeout=1200,
        )
    if result.returncode != 0:
        tail = Path(log.name).read_text()[-600:]
        raise RuntimeError(f"pip install {' '.join(REQUIREMENTS[peer])} failed (log {log.name}): {tail}")
    Path(log.name).unlink()
    marker.write_text(wanted)
    return python(peer, cache)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="where the venvs go (default ~/.cache/orchestrator-bench-peers)")
    parser.add_argument("--only", default=",".join(REQUIREMENTS))
    args = parser.parse_args()
    for peer in args.only.split(","):
        print(f"{peer}: {ensure(peer, cache_dir(args.cache))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the peer drivers; standard library only, since they run in each peer's own venv."""

from __future__ import annotations

import json
import time
from typing import Any


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(durations: list[float], elapsed: float, failed: int) -> dict[str, Any]:
    """The same fields as `bench.load workflows` prints, so the rows read the same for every system."""
    return {
        "workflows": len(durations),
        "per_second": len(durations) / elapsed if elapsed else float("nan"),
        "p50_ms": percentile(durations, 0.5) * 1000,
        "p99_ms": percentile(durations, 0.99) * 1000,
        "failed": failed,
        "seconds": elapsed,
    }


def lag_stats(lags: list[float]) -> dict[str, Any]:
    return {
        "events": len(lags),
        "p50_ms": percentile(lags, 0.5) * 1000,
        "p99_ms": percentile(lags, 0.99) * 1000,
        "max_ms": (max(lags) if lags else float("nan")) * 1000,
    }


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds

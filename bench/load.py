"""Load generators, each in its own process so the client is not the server's bottleneck.

    python -m bench.load unary --target H:P --method status|health|noop --session S --concurrency C --seconds D
    python -m bench.load workflows --target H:P --count N --concurrency C [--type full]
    python -m bench.load watchers --target H:P --session S --count K
    python -m bench.load sse --url http://H:P --session S --count K

Each prints one JSON object with its measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.gen.orchestrator.v1 import enums_pb2 as enums
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.gen.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc

TERMINAL = {enums.EVENT_TYPE_WORKFLOW_COMPLETED, enums.EVENT_TYPE_WORKFLOW_FAILED, enums.EVENT_TYPE_WORKFLOW_CANCELLED}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def unary(args: argparse.Namespace) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        if args.method == "status":
            request = pb.GetWorkflowStatusRequest(session_id=args.session)

            def call() -> Any:
                return stub.GetWorkflowStatus(request)
        elif args.method == "types":

            def call() -> Any:
                return stub.ListWorkflowTypes(pb.ListWorkflowTypesRequest())
        else:  # the grpc.health.v1 check: the cheapest RPC the same server answers (the floor)
            check = health_pb2.HealthCheckRequest()

            def call() -> Any:
                return health.Check(check)

        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + args.seconds
        warmup_until = time.perf_counter() + min(1.0, args.seconds / 5)

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < deadline:
                try:
                    await call()
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if now >= warmup_until:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        measured = args.seconds - min(1.0, args.seconds / 5)
        return {
            "requests": len(latencies),
            "rps": len(latencies) / measured,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "errors": errors,
        }


async def workflows(args: argparse.Namespace) -> dict[str, Any]:
    """Submit `count` workflows with `concurrency` in flight; each slot waits on events (not get_result)."""
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        durations: list[float] = []
        failures = 0
        remaining = args.count

        async def one() -> None:
            nonlocal failures
            started = time.perf_counter()
            response = await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(requirements="benchmark", workflow_type=args.type)
            )
            last = None
            async for event in stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=response.session_id)):
                last = event
                if event.type in TERMINAL:
                    break
            if last is None or last.type != enums.EVENT_TYPE_WORKFLOW_COMPLETED:
                failures += 1
            durations.append(time.perf_counter() - started)

        async def slot() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        began = time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
        return {
            "workflows": len(durations),
            "per_second": len(durations) / elapsed,
            "p50_ms": percentile(durations, 0.5) * 1000,
            "p99_ms": percentile(durations, 0.99) * 1000,
            "failed": failures,
            "seconds": elapsed,
        }


async def submit(args: argparse.Namespace) -> dict[str, Any]:
    """Submit `count` workflows without waiting for them; prints their session ids."""
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        ids: list[str] = []
        remaining = args.count

        async def slot() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await stub.ExecuteWorkflow(
                    pb.ExecuteWorkflowRequest(requirements="benchmark", workflow_type=args.type)
                )
                ids.append(response.session_id)

        began = time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(args.concurrency)))
        return {"session_ids": ids, "per_second": len(ids) / (time.perf_counter() - began)}


async def watchers(args: argparse.Namespace) -> dict[str, Any]:
    """`count` watchers of one session: phase finished (model's clock) -> event received, per watcher."""
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        lags: list[float] = []
        ready = asyncio.Event()
        subscribed = 0

        async def watch() -> None:
            nonlocal subscribed
            call = stub.WatchWorkflow(pb.WatchWorkflowRequest(session_id=args.session))
            since = None
            async for event in call:
                received = time.time()
                if since is None:
                    since = received  # replayed events before this say nothing about live delivery
                    subscribed += 1
                    if subscribed == args.count:
                        ready.set()
                done = event.data["done_at"] if "done_at" in event.data else 0  # noqa: SIM401 - a Struct has no get()
                if event.type == enums.EVENT_TYPE_PHASE_COMPLETED and done > since:
                    lags.append(received - done)
                if event.type in TERMINAL:
                    return

        tasks = [asyncio.create_task(watch()) for _ in range(args.count)]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.timeout)
        return {"watchers": args.count, "events": len(lags), **_lag_stats(lags)}


async def sse(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    lags: list[float] = []
    limits = httpx.Limits(max_connections=args.count + 10, max_keepalive_connections=args.count + 10)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as http:

        async def watch() -> None:
            headers = {"accept": "text/event-stream"}
            since = time.time()
            async with http.stream("GET", f"/workflow-events/{args.session}", headers=headers) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    received = time.time()
                    event = json.loads(line[5:])
                    done = event.get("data", {}).get("done_at", 0)
                    if event["type"] == "EVENT_TYPE_PHASE_COMPLETED" and done > since:
                        lags.append(received - done)
                    if event["type"] in ("EVENT_TYPE_WORKFLOW_COMPLETED", "EVENT_TYPE_WORKFLOW_FAILED"):
                        return

        await asyncio.gather(*(watch() for _ in range(args.count)))
    return {"watchers": args.count, "events": len(lags), **_lag_stats(lags)}


def _lag_stats(lags: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(lags, 0.5) * 1000,
        "p99_ms": percentile(lags, 0.99) * 1000,
        "max_ms": (max(lags) if lags else float("nan")) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    u = sub.add_parser("unary")
    u.add_argument("--target", required=True)
    u.add_argument("--method", choices=["status", "health", "types"], required=True)
    u.add_argument("--session", default="")
    u.add_argument("--concurrency", type=int, default=20)
    u.add_argument("--seconds", type=float, default=5)
    w = sub.add_parser("workflows")
    w.add_argument("--target", required=True)
    w.add_argument("--count", type=int, default=300)
    w.add_argument("--concurrency", type=int, default=20)
    w.add_argument("--type", default="full")
    s = sub.add_parser("submit")
    s.add_argument("--target", required=True)
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--concurrency", type=int, default=20)
    s.add_argument("--type", default="full")
    for name in ("watchers", "sse"):
        p = sub.add_parser(name)
        p.add_argument("--session", required=True)
        p.add_argument("--count", type=int, default=1)
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--target" if name == "watchers" else "--url", required=True)
    args = parser.parse_args()
    handler = {"unary": unary, "workflows": workflows, "submit": submit, "watchers": watchers, "sse": sse}[args.mode]
    print(json.dumps(asyncio.run(handler(args))), flush=True)


if __name__ == "__main__":
    main()

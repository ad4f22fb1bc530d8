"""The `orchestrator` command: `serve` runs the service; the other subcommands are its gRPC client."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import grpc
from google.protobuf import json_format

from service.gen.orchestrator.v1 import enums_pb2 as enums

DEFAULT_TARGET = os.environ.get("ORCHESTRATOR_TARGET", "127.0.0.1:50051")
# Long enough to ride out a graceful restart (about 15 s) or a database failover (a minute or two).
DEFAULT_RETRY_TIMEOUT = os.environ.get("ORCHESTRATOR_RETRY_TIMEOUT", "300")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Multi-agent workflow orchestrator.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the service (gRPC, metrics and the Envoy REST sidecar)",
        description="Every flag overrides its ORCHESTRATOR_* environment variable; see the README's reference.",
    )
    for name, info in _serve_settings().items():
        flag = f"--{name.replace('_', '-')}"
        help = f"{info.description or ''} (ORCHESTRATOR_{name.upper()})"
        if info.annotation is bool:
            serve.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            serve.add_argument(flag, dest=name, default=None, help=help)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--target", default=DEFAULT_TARGET, help="gRPC address (ORCHESTRATOR_TARGET)")
        p.add_argument(
            "--token",
            default=os.environ.get("ORCHESTRATOR_TOKEN") or None,
            help="bearer JWT sent as 'authorization: Bearer ...' (prefer ORCHESTRATOR_TOKEN: argv is visible to ps)",
        )
        p.add_argument(
            "--retry-timeout",
            type=_seconds,
            default=DEFAULT_RETRY_TIMEOUT,  # a string default goes through `type` too: a bad value is a usage error
            metavar="SECONDS",
            help="how long to keep retrying while the service is unavailable (restarting, its database down), "
            "and to keep resuming a watch; 0 never retries (ORCHESTRATOR_RETRY_TIMEOUT, default 300)",
        )
        return p

    submit = client("submit", "submit a workflow")
    submit.add_argument("requirements")
    submit.add_argument("--type", default="full", dest="workflow_type")
    submit.add_argument("--config", default="{}", help="configuration as JSON")
    submit.add_argument("--priority", default="normal", choices=["low", "normal", "high", "critical"])
    submit.add_argument("--request-id", default="")
    submit.add_argument("--watch", action="store_true", help="follow it to the end")
    status = client("status", "show a workflow's status")
    status.add_argument("session_id")
    watch = client("watch", "follow a workflow's events with a progress bar")
    watch.add_argument("session_id")
    watch.add_argument("--after", type=int, default=0)
    cancel = client("cancel", "cancel a workflow")
    cancel.add_argument("session_id")
    cancel.add_argument("--reason", default="")
    listing = client("list", "list workflows")
    listing.add_argument("--state", default="", choices=["", "queued", "running", "completed", "failed", "cancelled"])
    listing.add_argument("--type", default="", dest="workflow_type")
    listing.add_argument("--page-size", type=int, default=20)
    listing.add_argument("--page-token", default="")
    client("types", "list workflow types")
    client("health", "show service health")
    return parser


def _serve_settings() -> dict[str, Any]:
    from orchestrator.settings import Settings

    # Nested model settings (ORCHESTRATOR_AGENTS__*, ORCHESTRATOR_AUTH__*, ORCHESTRATOR_TLS__*) stay in the
    # environment: secrets do not belong in argv.
    return {name: info for name, info in Settings.model_fields.items() if name not in ("agents", "auth", "tls")}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    from service.client import WatchInterrupted

    # The client's retries, one line each on stderr: a command that waits out a restart says why it waits.
    retries = logging.StreamHandler(sys.stderr)
    retries.setFormatter(logging.Formatter("%(message)s"))
    client_log = logging.getLogger("service.client")
    client_log.addHandler(retries)
    client_log.setLevel(logging.INFO)
    try:
        return asyncio.run(_client_command(args))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except WatchInterrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client_log.removeHandler(retries)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from orchestrator.settings import Settings
    from service import logs
    from service.app import serve

    overrides: dict[str, Any] = {k: getattr(args, k) for k in _serve_settings() if getattr(args, k) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(map(str, error["loc"]))
            print(
                f"invalid setting {where}: {error['msg']}" if where else f"invalid settings: {error['msg']}",
                file=sys.stderr,
            )
        return 2
    logs.configure(settings.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    from service.startup import StartupError

    try:
        asyncio.run(run())
    except StartupError as exc:  # a port in use, the database down, Envoy refusing: one line, no traceback
        print(f"cannot start: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return 0


async def _client_command(args: argparse.Namespace) -> int:
    from service.client import OrchestratorClient

    async with OrchestratorClient(args.target, token=args.token, retry_timeout=args.retry_timeout) as client:
        match args.command:
            case "submit":
                response = await client.submit(
                    args.requirements,
                    args.workflow_type,
                    configuration=json.loads(args.config),
                    priority=args.priority,
                    request_id=args.request_id,
                )
                _print(response)
                if args.watch:
                    return await _watch(client, response.session_id, 0)
            case "status":
                _print(await client.status(args.session_id))
            case "watch":
                return await _watch(client, args.session_id, args.after)
            case "cancel":
                _print(await client.cancel(args.session_id, args.reason))
            case "list":
                state = f"WORKFLOW_STATE_{args.state.upper()}" if args.state else enums.WORKFLOW_STATE_UNSPECIFIED
                _print(
                    await client.list(
                        page_size=args.page_size,
                        page_token=args.page_token,
                        state=state,
                        workflow_type=args.workflow_type,
                    )
                )
            case "types":
                _print(await client.types())
            case "health":
                _print(await client.health())
    return 0


def _print(message: Any) -> None:
    print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2))


async def _watch(client: Any, session_id: str, after: int) -> int:
    outcome = 1
    async for event in client.watch(session_id, after):
        kind = enums.EventType.Name(event.type).removeprefix("EVENT_TYPE_").lower()
        if event.type == enums.EVENT_TYPE_HEARTBEAT:
            continue
        bar = "#" * (event.progress // 5) + "." * (20 - event.progress // 5)
        label = f"{kind}{' ' + event.phase if event.phase else ''}"
        print(f"[{bar}] {event.progress:3d}%  #{event.sequence:<3d} {label}  {event.message}".rstrip(), flush=True)
        if event.type == enums.EVENT_TYPE_WORKFLOW_COMPLETED:
            result = event.result
            print(f"\n{len(result.generated_code)} files generated:")
            for f in result.generated_code:
                print(f"  {f.path} ({len(f.content)} bytes)")
            if result.HasField("test_report"):
                r = result.test_report
                print(f"tests: {r.passed} passed, {r.failed} failed, {r.errors} errors (success={r.success})")
            usage = result.usage
            print(
                f"usage: {usage.input_tokens} in / {usage.output_tokens} out tokens, "
                f"${usage.cost_usd:.4f}, models {list(usage.models)}"
            )
            outcome = 0
    return outcome


if __name__ == "__main__":
    sys.exit(main())

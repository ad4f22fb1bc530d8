"""Command line for operators and CI: render the Envoy bootstrap, or validate one with the Envoy binary.

python -m gateway render --grpc-port 50051 --metrics-port 9090 --live-port 9465 --listen-port 8080 > envoy.yaml
python -m gateway render ... --allowed-host api.example.com --upstream-ca ca.pem --upstream-cert envoy.pem \
    --upstream-key envoy.key --upstream-server-name orchestrator   # TLS (and mutual TLS) to the service
python -m gateway validate envoy.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import DEFAULT_ALLOWED_HOSTS, GatewayOptions, MiB, render_yaml
from gateway.restface import DEFAULT_DESCRIPTOR
from gateway.sidecar import EnvoyError, validate


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "render":
        try:
            options = GatewayOptions(
                listen_host=args.listen_host,
                listen_port=args.listen_port,
                admin_host=args.admin_host,
                admin_port=args.admin_port,
                grpc_host=args.grpc_host,
                grpc_port=args.grpc_port,
                metrics_host=args.metrics_host,
                metrics_port=args.metrics_port,
                live_host=args.live_host,
                live_port=args.live_port,
                descriptor_path=args.descriptor,
                allowed_hosts=tuple(args.allowed_host or DEFAULT_ALLOWED_HOSTS),
                cors_allowed_origins=tuple(args.cors_origin),
                max_request_bytes=args.max_request_bytes,
                upstream_ca_file=_absolute(args.upstream_ca),
                upstream_cert_file=_absolute(args.upstream_cert),
                upstream_key_file=_absolute(args.upstream_key),
                upstream_server_name=args.upstream_server_name,
            )
            text = render_yaml(options)
        except (ValueError, OSError) as error:
            print(f"gateway render: {error}", file=sys.stderr)
            return 2
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
        return 0
    try:
        validate(args.config)
    except EnvoyError as error:
        print(f"gateway validate: {error}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="print the Envoy bootstrap YAML")
    render.add_argument("--grpc-port", type=int, required=True, help="the gRPC service's port")
    render.add_argument("--metrics-port", type=int, required=True, help="the service's Prometheus HTTP port")
    render.add_argument("--grpc-host", default="127.0.0.1", help="IP address or DNS name (default %(default)s)")
    render.add_argument("--metrics-host", default="127.0.0.1", help="IP address or DNS name (default %(default)s)")
    render.add_argument("--live-host", default="127.0.0.1", help="IP address or DNS name (default %(default)s)")
    render.add_argument(
        "--live-port",
        type=int,
        default=9465,
        help="the service's live endpoint port (WebSocket, REST watch; ORCHESTRATOR_LIVE_PORT) (default %(default)s)",
    )
    render.add_argument("--listen-host", default="127.0.0.1", help="REST listener IP (default %(default)s)")
    render.add_argument("--listen-port", type=int, default=8080, help="REST listener port (default %(default)s)")
    render.add_argument("--admin-host", default="127.0.0.1", help="admin IP, loopback only (default %(default)s)")
    render.add_argument("--admin-port", type=int, default=9901, help="admin port (default %(default)s)")
    render.add_argument("--descriptor", type=Path, default=DEFAULT_DESCRIPTOR, help="descriptor set (.pb)")
    render.add_argument(
        "--cors-origin", action="append", default=[], help="an allowed CORS origin; repeat for more (default none)"
    )
    render.add_argument(
        "--max-request-bytes", type=int, default=MiB, help="larger request bodies get 413 (default %(default)s)"
    )
    render.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help=f"a Host header value the REST port answers (others get 421); repeat for more, '*' for any "
        f"(default {' '.join(DEFAULT_ALLOWED_HOSTS)})",
    )
    render.add_argument("--upstream-ca", type=Path, help="CA bundle (PEM): TLS to the service, verified with it")
    render.add_argument("--upstream-cert", type=Path, help="client certificate (PEM) for mutual TLS to the service")
    render.add_argument("--upstream-key", type=Path, help="private key (PEM) of --upstream-cert")
    render.add_argument(
        "--upstream-server-name",
        default="localhost",
        help="name expected in the service's certificate, sent as SNI (default %(default)s)",
    )
    render.add_argument("-o", "--output", type=Path, help="write here instead of standard output")

    check = commands.add_parser("validate", help="run `envoy --mode validate` on a bootstrap file")
    check.add_argument("config", type=Path)
    return parser


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()


if __name__ == "__main__":
    raise SystemExit(main())

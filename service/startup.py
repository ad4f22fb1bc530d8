"""Start-up failures in one line: what could not start and why, for the person who ran `orchestrator serve`.

A traceback is the wrong answer to "port 50051 is taken" or "the database refused the connection": `serve`
prints `cannot start: <line>` on stderr and exits non-zero. The traceback of an unexpected failure is still
logged at DEBUG for whoever needs it.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from pathlib import Path

import sqlalchemy.exc

from gateway.sidecar import EnvoyError
from orchestrator.errors import OrchestratorError

logger = logging.getLogger(__name__)

__all__ = ["StartupError", "check_port_free", "describe_startup_failure"]

_MAX_CHARS = 400
# Envoy's log line prefix, e.g. "[2026-12-02 01:16:59.509][21289][critical][main] [source/server/server.cc:449] ".
_ENVOY_PREFIX = re.compile(r"^(\[[^\]]*\])+\s*(\[[^\]]*\]\s*)?")
_ENVOY_BIND = re.compile(r"cannot bind '[^']*': [^`'\n]+")


class StartupError(Exception):
    """The service cannot start. The message is one line for people; `exit_code` is 2 for a configuration
    problem the operator must fix in settings or files, 1 for anything else (a port in use, a database down)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def check_port_free(what: str, host: str, port: int, flag: str) -> None:
    """Raises StartupError when `host:port` is taken (or not ours to bind), before a server tries it.

    gRPC's own bind failure says only "Failed to bind", after grpc's C core wrote a line of its own to stderr.
    SO_REUSEADDR as the servers set it: a port in TIME_WAIT is free, one with a listener is not.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"the {what} address {host!r} does not resolve: {exc.strerror}", exit_code=2) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"the {what} port {host}:{port} is already in use (another instance?); choose another with "
                        f"{flag}, or 0 for a free one"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise StartupError(
                        f"not allowed to listen on the {what} port {host}:{port} (ports below 1024 need "
                        f"privileges); choose another with {flag}"
                    ) from None
                # Anything else (an address family this host lacks, ...) is the server's to judge.


def describe_startup_failure(exc: BaseException, envoy_log: Path | None = None) -> StartupError:
    """The one-line StartupError for whatever stopped the service from starting."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, OrchestratorError):  # e.g. an invalid workflow type file
        return StartupError(_one_line(exc.message), exit_code=2)
    if isinstance(exc, EnvoyError):
        return StartupError(_envoy(str(exc), envoy_log))
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        # The driver's own first line names the host and port, never the password.
        return StartupError(f"cannot use the database: {_one_line(str(exc.orig))}")
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return StartupError(f"cannot use the database: {_one_line(str(exc))}")
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return StartupError(f"cannot use{where}: {exc.strerror}")
    logger.debug("start-up failed", exc_info=exc)
    return StartupError(
        f"{type(exc).__name__}: {_one_line(str(exc)) or 'no message'} (--log-level DEBUG logs the traceback)"
    )


def _envoy(message: str, log: Path | None) -> str:
    """Envoy's "exited with code 1 before it was ready:\n<log tail>" as one line with Envoy's own reason."""
    first, _, tail = message.partition("\n")
    reasons = [line for line in tail.splitlines() if "[critical]" in line or "[error]" in line]
    bind = _ENVOY_BIND.search(tail)
    if bind is not None:
        reason = bind.group(0).strip()
    elif reasons:
        reason = _ENVOY_PREFIX.sub("", reasons[0]).strip()
    else:
        reason = ""
    text = f"the Envoy sidecar did not start: {first.rstrip(':')}"
    if reason:
        text += f": {reason}"
    if "cannot bind" in reason and "Address already in use" in reason:
        text += " (another instance? choose other ports with --http-port / --envoy-admin-port)"
    if log is not None:
        text += f"; its log: {log}"
    return _one_line(text, _MAX_CHARS + 200)


def _one_line(text: str, limit: int = _MAX_CHARS) -> str:
    line = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"

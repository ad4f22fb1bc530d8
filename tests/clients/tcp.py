"""Loopback helpers for connection-failure tests: a TCP proxy whose connections a test can cut, and a reserved
port that refuses connections until a server binds it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator


class CuttableProxy:
    """Forwards 127.0.0.1:port to a target and counts connections; `cut()` resets every open one, as a crashed
    load balancer or a lost network path would, while new connections keep working."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.cut()
        await self._server.wait_closed()

    async def cut(self) -> None:
        writers, self._writers = self._writers, set()
        for writer in writers:
            # SO_LINGER 0: the close sends RST, so the client sees the connection fail, not a polite shutdown.
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {client_writer, upstream_writer}
        pumps = [
            asyncio.create_task(_pump(client_reader, upstream_writer)),
            asyncio.create_task(_pump(upstream_reader, client_writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
            self._tasks.discard(task)
        for writer in (client_writer, upstream_writer):
            self._writers.discard(writer)
            writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port bound (not listening) for the duration: connections to it are refused, a port picker
    elsewhere will not hand it out, and a gRPC server can still bind it: on Linux two sockets that both set
    SO_REUSEADDR (gRPC does) may share a port while neither listens. (Not SO_REUSEPORT: the server turns that
    off, so that a second instance cannot silently share its port.)"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()

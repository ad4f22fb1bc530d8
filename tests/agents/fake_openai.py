"""A real model API server on 127.0.0.1:0 (OpenAI chat completions, Anthropic messages), scripted per request:
the paid APIs we cannot call here."""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # keep the request open until the client disconnects (or the server is released)
    hold_seconds: float | None = None  # keep it open at most this long, then answer


Script = Callable[[dict[str, Any]], Reply]


def output_tool_name(request: dict[str, Any]) -> str:
    """The name of the output tool pydantic-ai offered (its structured output travels as a tool call)."""
    tools = request.get("tools") or []
    return str(tools[0]["function"]["name"]) if tools else "final_result"


def completion(
    request: dict[str, Any], arguments: dict[str, Any], *, prompt_tokens: int = 50, completion_tokens: int = 20
) -> Reply:
    """A chat completion that calls the output tool with `arguments`."""
    return Reply(
        body={
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": request.get("model", "fake-model"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": output_tool_name(request), "arguments": json.dumps(arguments)},
                            }
                        ],
                    },
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def anthropic_message(request: dict[str, Any], arguments: dict[str, Any], *, input_tokens: int = 40) -> Reply:
    """An Anthropic message that calls the output tool with `arguments`."""
    tools = request.get("tools") or [{"name": "final_result"}]
    return Reply(
        body={
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "claude-fake"),
            "content": [{"type": "tool_use", "id": "toolu_1", "name": tools[0]["name"], "input": arguments}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 10},
        }
    )


def error(status: int, message: str = "error", *, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status=status, body={"error": {"message": message, "type": "fake", "code": None}}, headers=headers or {}
    )


ANALYST_OUTPUT = {
    "summary": "A todo list library.",
    "functional_requirements": ["add items"],
    "non_functional_requirements": ["python 3.11"],
    "acceptance_criteria": ["adding an item returns it"],
}


class FakeOpenAI:
    """Answers POST /v1/chat/completions with the next scripted reply (the last one repeats) and GET /v1/models."""

    def __init__(self, *replies: Script) -> None:
        self.replies: list[Script] = list(replies) or [lambda request: completion(request, ANALYST_OUTPUT)]
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = threading.Event()  # a held request arrived
        self.disconnected = threading.Event()  # the client closed a held request's connection
        self.release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def chat_requests(self) -> int:
        with self.lock:
            return len(self.requests)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self, request: dict[str, Any]) -> Reply:
        with self.lock:
            index = len(self.requests)
            self.requests.append(request)
        return self.replies[min(index, len(self.replies) - 1)](request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, reply: Reply) -> None:
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def _hold(self, reply: Reply) -> bool:
                """Wait for a disconnect (True) or the end of the hold (False)."""
                fake.started.set()
                waited = 0.0
                while not fake.release.is_set():
                    readable, _, _ = select.select([self.connection], [], [], 0.02)
                    if readable:
                        try:
                            data = self.connection.recv(1, socket.MSG_PEEK)
                        except OSError:
                            data = b""
                        if not data:
                            fake.disconnected.set()
                            return True
                    waited += 0.02
                    if reply.hold_seconds is not None and waited >= reply.hold_seconds:
                        return False
                return False

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    models = {
                        "object": "list",
                        "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "test"}],
                    }
                    self._send(Reply(body=models))
                else:
                    self._send(error(404, "not found"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if not self.path.endswith(("/chat/completions", "/messages")):
                        self._send(error(404, "not found"))
                        return
                    reply = fake._next(request)
                    if (reply.hold or reply.hold_seconds is not None) and self._hold(reply):
                        return
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        return Handler

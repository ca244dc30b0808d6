"""A real HTTP server that stands for OpenAI-compatible providers, for client-kit tests.

One server on 127.0.0.1 serves every provider under its own path prefix (``/gemini/v1beta/
openai``, ``/xai/v1``...), so a test points each provider's base URL at it and sees which
prefix, key and model each request reached. It answers ``GET models``, ``GET models/{id}`` and
``POST chat/completions`` (whole or streamed: ``<provider> says: <last user message>``), and
errors in each provider's own shape:

* model ``missing``: 404, in the provider's error shape (Gemini's JSON array, xAI's flat string
  ``error``, PLaMo's bare ``message``, OpenAI's envelope elsewhere);
* model ``brief``: answers with the first :data:`BRIEF_WORDS` words of the message only;
* model ``small-window``: 400 ``context_length_exceeded`` once the messages hold more than
  :data:`SMALL_WINDOW_CHARS` characters, and a card without a context window.

Unknown routes answer 404 except under ``/lmstudio``, which answers 200 with an error body as
LM Studio does.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["PREFIXES", "SMALL_WINDOW_CHARS", "FakeProviders", "Seen", "run_fake_providers"]

PREFIXES = {
    "openai": "/openai/v1",
    "gemini": "/gemini/v1beta/openai",
    "xai": "/xai/v1",
    "plamo": "/plamo/v1",
    "lmstudio": "/lmstudio/v1",
    "llama-server": "/llama/v1",
    "ollama": "/ollama/v1",
    "kakehashi": "/kakehashi/v1",
}
BASE_URL_VARS = {
    "openai": "OPENAI_BASE_URL",
    "gemini": "GEMINI_BASE_URL",
    "xai": "XAI_BASE_URL",
    "plamo": "PLAMO_BASE_URL",
    "lmstudio": "LMSTUDIO_BASE_URL",
    "llama-server": "LLAMA_SERVER_BASE_URL",
    "ollama": "OLLAMA_BASE_URL",
    "kakehashi": "KAKEHASHI_BASE_URL",
}
SMALL_WINDOW_CHARS = 200
BRIEF_WORDS = 12


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    provider: str
    method: str
    path: str  # under the provider's prefix
    authorization: str | None
    body: dict[str, Any] | None


@dataclass
class FakeProviders:
    """The running server: its root URL and every request it saw."""

    root_url: str
    seen: list[Seen] = field(default_factory=list)

    def base_url(self, provider: str) -> str:
        """The base URL that stands for ``provider``."""
        return self.root_url + PREFIXES[provider]

    def env(self) -> dict[str, str]:
        """Every provider's base-URL variable pointed here."""
        return {var: self.base_url(name) for name, var in BASE_URL_VARS.items()}

    def chats(self) -> list[Seen]:
        """The chat completion requests, in order."""
        return [s for s in self.seen if s.path == "/chat/completions"]


def _error_body(provider: str, status: int, message: str, code: str) -> Any:
    if provider == "gemini":
        return [{"error": {"code": status, "message": message, "status": "NOT_FOUND"}}]
    if provider == "xai":
        return {"code": "Some requested entity was not found", "error": message}
    if provider == "plamo":
        return {"message": message}
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _split(self) -> tuple[str, str] | None:
        for name, prefix in PREFIXES.items():
            if self.path.startswith(prefix + "/"):
                return name, self.path[len(prefix) :]
        return None

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        body = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(self.rfile.read(length))
        split = self._split()
        if split is None:
            self._send(404, {"error": {"message": "no such provider", "type": "x"}})
            return
        provider, path = split
        self.server.state.seen.append(
            Seen(provider, method, path, self.headers.get("Authorization"), body)
        )
        if method == "GET" and path == "/models":
            self._send(200, {"object": "list", "data": [self._card(provider, "first-model")]})
        elif method == "GET" and path.startswith("/models/"):
            self._send(200, self._card(provider, path.removeprefix("/models/")))
        elif method == "POST" and path == "/chat/completions" and body is not None:
            self._chat(provider, body)
        elif provider == "lmstudio":
            self._send(200, {"error": f"Unexpected endpoint or method. ({method} {path})"})
        else:
            self._send(404, {"error": {"message": f"Invalid URL ({method} {path})"}})

    do_GET = lambda self: self._handle("GET")  # noqa: E731
    do_POST = lambda self: self._handle("POST")  # noqa: E731

    @staticmethod
    def _card(provider: str, model: str) -> dict[str, Any]:
        card = {"id": model, "object": "model", "created": 0, "owned_by": provider}
        if model != "small-window":
            card["context_length"] = 100_000
        return card

    def _chat(self, provider: str, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model == "missing":
            message = f"The model `{model}` does not exist or you do not have access to it."
            self._send(404, _error_body(provider, 404, message, "model_not_found"))
            return
        size = sum(len(str(m.get("content") or "")) for m in body["messages"])
        if model == "small-window" and size > SMALL_WINDOW_CHARS:
            message = "This model's maximum context length is 50 tokens."
            self._send(400, _error_body(provider, 400, message, "context_length_exceeded"))
            return
        said = str(body["messages"][-1]["content"])
        if model == "brief":  # answers with the first words only, as a summary would
            said = " ".join(said.split()[:BRIEF_WORDS])
        text = f"{provider} says: {said}"
        usage = {"prompt_tokens": size, "completion_tokens": 3, "total_tokens": size + 3}
        header = {"id": "chatcmpl-fake", "created": 0, "model": model}
        if not body.get("stream"):
            self._send(
                200,
                {
                    **header,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {**header, "object": "chat.completion.chunk"}
        frames = [
            {**chunk, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            for word in re.findall(r"\S+\s*", text)
        ]
        frames.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append({**chunk, "choices": [], "usage": usage})
        for frame in frames:
            self.wfile.write(f"data: {json.dumps(frame)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeProviders


@contextlib.contextmanager
def run_fake_providers() -> Iterator[FakeProviders]:
    """Serve the fake providers on a free port of 127.0.0.1 for the ``with`` block."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = FakeProviders(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

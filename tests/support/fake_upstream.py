"""A small OpenAI-compatible server for tests and benchmarks, that fails on request.

Run it as a process (``python tests/support/fake_upstream.py --port P --name N``). It answers
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` (streamed or not, usage
only when ``include_usage`` asks for it, as OpenAI does), ``/v1/models`` and ``/health``; the
reply names the server (``hello from N``) and the model it was asked for.

Tests script faults over HTTP. ``POST /_faults`` with a list of faults queues them: each request
takes the next one (a fault with ``"times": n`` serves n requests; ``"times": -1`` forever):

- ``{"status": 429, "retry_after": 1}``: an error in OpenAI's shape, or with ``"shape"`` one of
  ``gemini``, ``xai``, ``plamo``, ``lmstudio`` (200 with an error body), ``llama-server``,
  ``vllm``, ``ollama``, ``html``, each as that provider writes it (``message``, ``code`` and
  ``type`` override the defaults);
- ``{"hang": 30}``: wait that many seconds before answering;
- ``{"close_after": 2}``: stream two chunks, then drop the connection;
- ``{"error_frame_after": 2}``: stream two chunks, then an ``error`` frame.

``GET /_stats`` tells what arrived: request count, the last bodies, and how many streams the
client abandoned (``disconnects``). ``POST /_reset`` clears both. ``--delay`` paces chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from typing import Any

Scope = dict[str, Any]

SHAPES = ("openai", "gemini", "xai", "plamo", "lmstudio", "llama-server", "vllm", "ollama", "html")
_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}
_GEMINI_STATUS |= {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def error_body(fault: dict[str, Any]) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The status, body and extra headers of a scripted error, in the provider's shape."""
    status = int(fault.get("status", 500))
    shape = fault.get("shape", "openai")
    message = fault.get("message", f"scripted failure {status}")
    headers: list[tuple[bytes, bytes]] = []
    if "retry_after" in fault and shape != "gemini":
        headers.append((b"retry-after", str(fault["retry_after"]).encode()))
    body: Any
    if shape == "openai":
        code = fault.get("code", "rate_limit_exceeded" if status == 429 else None)
        kind = fault.get("type", "requests" if status == 429 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    elif shape == "gemini":
        details: list[Any] = []
        if "retry_after" in fault:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{fault['retry_after']}s",
                }
            )
        status_name = fault.get("code", _GEMINI_STATUS.get(status, "UNKNOWN"))
        body = [
            {
                "error": {
                    "code": status,
                    "message": message,
                    "status": status_name,
                    "details": details,
                }
            }
        ]
    elif shape == "xai":
        body = {"code": fault.get("code", "Client specified an invalid argument"), "error": message}
    elif shape == "plamo":
        body = {"message": message}
    elif shape == "lmstudio":
        status = 200
        body = {"error": message}
    elif shape == "llama-server":
        kind = fault.get("type", "invalid_request_error")
        body = {"error": {"code": status, "message": message, "type": kind}}
        if kind == "exceed_context_size_error":
            body["error"] |= {"n_prompt_tokens": 9000, "n_ctx": 4096}
    elif shape == "vllm":
        kind = fault.get("type", "BadRequestError")
        body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    elif shape == "ollama":
        body = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
    else:  # html: a proxy's error page
        html = f"<html><body><h1>{status}</h1><p>{message}</p></body></html>"
        return status, html.encode(), [(b"content-type", b"text/html")]
    return status, json.dumps(body).encode(), [(b"content-type", b"application/json"), *headers]


class FakeUpstream:
    """The ASGI app."""

    def __init__(self, name: str, *, chunks: int = 8, delay: float = 0.0) -> None:
        self.name = name
        self.chunks = chunks
        self.delay = delay
        self.faults: deque[dict[str, Any]] = deque()
        self.requests = 0
        self.bodies: deque[Any] = deque(maxlen=50)
        self.disconnects = 0
        self.active = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path, method = scope["path"], scope["method"]
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/health":
            await _json(send, 200, {"status": "ok"})
        elif path == "/_stats":
            await _json(send, 200, self.stats())
        elif path == "/_reset":
            self.faults.clear()
            self.requests, self.disconnects = 0, 0
            self.bodies.clear()
            await _json(send, 200, {})
        elif path == "/_faults":
            self.faults.extend(json.loads(raw))
            await _json(send, 200, {"queued": len(self.faults)})
        elif path == "/v1/models" and method == "GET":
            data = [{"id": "fake", "object": "model", "created": 0, "owned_by": self.name}]
            await _json(send, 200, {"object": "list", "data": data})
        elif method == "POST" and path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
        ):
            await self.answer(path, raw, receive, send)
        else:
            await _json(send, 404, {"error": {"message": f"no route {path}", "type": "x"}})

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bodies": list(self.bodies),
            "disconnects": self.disconnects,
            "active": self.active,
        }

    def _fault(self) -> dict[str, Any] | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        times = fault.get("times", 1)
        if times == 1:
            self.faults.popleft()
        elif times > 1:
            fault["times"] = times - 1
        return fault

    async def answer(self, path: str, raw: bytes, receive: Any, send: Any) -> None:
        self.requests += 1
        body = json.loads(raw)
        self.bodies.append(body)
        fault = self._fault() or {}
        if "hang" in fault:
            await asyncio.sleep(float(fault["hang"]))
        if "status" in fault:
            status, content, headers = error_body(fault)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        model = body.get("model", "fake")
        if path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": [0.6, 0.8, 0.0]}
                for i in range(len(inputs))
            ]
            usage = {"prompt_tokens": len(inputs) * 2, "total_tokens": len(inputs) * 2}
            await _json(send, 200, {"object": "list", "data": data, "model": model, "usage": usage})
            return
        chat = path == "/v1/chat/completions"
        words = [f"hello from {self.name}", *[f" w{i}" for i in range(1, self.chunks)]]
        prompt_tokens = max(1, len(raw) // 16)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if body.get("stream"):
            await self.stream(body, chat, model, words, usage, fault, receive, send)
            return
        created = int(time.time())
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
            answer = {"id": "chatcmpl-fake", "object": "chat.completion"}
        else:
            choice = {"index": 0, "text": "".join(words), "logprobs": None, "finish_reason": "stop"}
            answer = {"id": "cmpl-fake", "object": "text_completion"}
        answer |= {"created": created, "model": model, "choices": [choice], "usage": usage}
        await _json(send, 200, answer)

    async def stream(
        self,
        body: dict[str, Any],
        chat: bool,
        model: str,
        words: list[str],
        usage: dict[str, Any],
        fault: dict[str, Any],
        receive: Any,
        send: Any,
    ) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        self.active += 1
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            header: dict[str, Any] = {"id": "chatcmpl-fake", "created": int(time.time())}
            header |= {"model": model}
            header["object"] = "chat.completion.chunk" if chat else "text_completion"
            extra = {"usage": None} if include_usage else {}
            frames = []
            for i, word in enumerate(words):
                if chat:
                    delta = {"content": word} | ({"role": "assistant"} if i == 0 else {})
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": word, "finish_reason": None}
                frames.append(header | {"choices": [choice]} | extra)
            last = {"index": 0, "finish_reason": "stop"}
            last |= {"delta": {}} if chat else {"text": ""}
            frames.append(header | {"choices": [last]} | extra)
            if include_usage:
                frames.append(header | {"choices": [], "usage": usage})
            for sent, frame in enumerate(frames):
                if sent == fault.get("close_after"):
                    raise ConnectionAbortedError("scripted: drop the connection")
                if sent == fault.get("error_frame_after"):
                    err = {"message": "scripted mid-stream failure", "type": "server_error"}
                    err |= {"param": None, "code": "server_error"}
                    await _frame(send, {"error": err})
                    break
                if gone.is_set():
                    self.disconnects += 1
                    return
                await _frame(send, frame)
                if self.delay:
                    await asyncio.sleep(self.delay)
            else:
                await send(
                    {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True}
                )
            await send({"type": "http.response.body", "body": b""})
        finally:
            self.active -= 1
            watcher.cancel()


async def _frame(send: Any, payload: Any) -> None:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _json(send: Any, status: int, payload: Any) -> None:
    content = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    app = FakeUpstream(args.name, chunks=args.chunks, delay=args.delay)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""Running the app under uvicorn, with a drain on SIGTERM/SIGINT instead of uvicorn's
close-the-listener-and-wait: the server keeps answering (``/health`` says "draining", new API
requests get a 503) until the requests in flight end or the drain deadline aborts them."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from kakehashi.api.drain import ABORT_GRACE_SECONDS, Drain

_AFTER_DRAIN_SECONDS = ABORT_GRACE_SECONDS
"""uvicorn's own graceful-shutdown timeout, once the drain is over (or a second signal)."""


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT starts the app's drain; it exits when the
    drain is over. A second signal exits at once (as uvicorn does)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, *, deadline: float) -> None:
        super().__init__(config)
        self._app = app
        self._deadline = deadline
        self._signal: int | None = None
        self._drain_task: asyncio.Task[bool] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only record it; on_tick starts the drain on the loop.
        if self._signal is None and sig in (signal.SIGTERM, signal.SIGINT):
            self._signal = sig
            self._captured_signals.append(sig)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and self._drain_task is None:
            drain: Drain = self._app.state.drain
            self._drain_task = asyncio.create_task(
                drain.run(self._deadline, self._app.state.service.stop)
            )
        if self._drain_task is not None and self._drain_task.done():
            return True
        return await super().on_tick(counter)


def serve(app: FastAPI, *, host: str, port: int, log_level: str, drain_timeout: float) -> None:
    """Serve ``app`` until a signal and its drain (``drain_timeout`` seconds at most) end."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(_AFTER_DRAIN_SECONDS),
    )
    DrainingServer(config, app, deadline=drain_timeout).run()

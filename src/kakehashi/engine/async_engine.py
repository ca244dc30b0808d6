"""The asyncio face of the engine: one background thread pumps ``LLMEngine.step()``.

Requests and aborts from the event loop are queued and applied by the engine thread between
steps, so the synchronous core never sees two threads. A step's chunks travel back to their
event loop in one ``call_soon_threadsafe`` hand-off (one wake-up of the loop per step, not one
per stream), into a per-request inbox. A reader that fell behind gets everything its inbox
holds as one chunk, so a slow client costs one frame per read rather than one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from kakehashi.engine.engine import EngineOverloadedError, EngineStats, LLMEngine, StepError
from kakehashi.engine.models.base import ModelConfig
from kakehashi.engine.params import GenerationChunk, SamplingParams
from kakehashi.engine.tokenizer import Tokenizer
from kakehashi.errors import ServerError

logger = logging.getLogger(__name__)


class EngineError(ServerError):
    """The engine failed (or was shut down) and cannot serve this request."""


__all__ = ["AsyncEngine", "EngineError", "EngineOverloadedError", "Generation"]


Item = GenerationChunk | BaseException


class _Inbox:
    """One request's undelivered items, filled on its event loop's thread."""

    def __init__(self) -> None:
        self.items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def push(self, item: Item) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the inbox holds an item."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def _hand_over(deliveries: list[tuple[_Inbox, Item]]) -> None:
    for inbox, item in deliveries:
        inbox.push(item)


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    inbox: _Inbox

    def put(self, item: Item) -> None:
        _send(self.loop, [(self.inbox, item)])


def _send(loop: asyncio.AbstractEventLoop, deliveries: list[tuple[_Inbox, Item]]) -> None:
    # A RuntimeError means the consumer's loop is closed: nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_hand_over, deliveries)


class Generation:
    """The chunks of one admitted request, as an async iterator; closing it (or cancelling a
    read) before the last chunk aborts the request.

    A read returns everything that arrived since the previous one as one chunk
    (:meth:`GenerationChunk.then`): one token per chunk while the reader keeps up, several
    when it is behind.
    """

    def __init__(self, engine: AsyncEngine, request_id: str, inbox: _Inbox) -> None:
        self._engine = engine
        self._request_id = request_id
        self._inbox = inbox
        self._done = False

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        try:
            await self._inbox.wait()
        except BaseException:
            self._abandon()
            raise
        items = self._inbox.items
        item = items.popleft()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        while items and not item.finished and isinstance(items[0], GenerationChunk):
            item = item.then(items.popleft())  # type: ignore[arg-type]
        self._done = item.finished
        return item

    async def aclose(self) -> None:
        """Abort the request unless it has finished."""
        self._abandon()

    def __del__(self) -> None:
        # Dropped without closing (``break`` out of ``async for``): abort, as a generator would.
        self._abandon()

    def _abandon(self) -> None:
        if not self._done:
            self._done = True
            self._engine.abort(self._request_id)


class AsyncEngine:
    """Runs an :class:`LLMEngine` on a background thread and streams results to coroutines."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._cond = threading.Condition()
        self._adds: list[tuple[str, list[int], SamplingParams, int]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: EngineError | None = None

    # -- properties ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def model_config(self) -> ModelConfig:
        return self.engine.model_config

    def stats(self) -> EngineStats:
        """The engine's current load (see :meth:`LLMEngine.stats`)."""
        return self.engine.stats()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="kakehashi-engine", daemon=True)
            self._thread.start()

    async def shutdown(self) -> None:
        """Abort everything in flight (final ABORT chunks), stop the thread, wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # -- requests --------------------------------------------------------------------------

    def check_admission(self, count: int = 1) -> None:
        """Raise :class:`EngineOverloadedError` now unless ``count`` more requests fit in the
        running slots and the queue. Every request :meth:`generate` has accepted and not yet
        finished counts, whether or not the engine thread has seen it; so ``count`` calls of
        :meth:`generate` right after (no await between) are all admitted."""
        with self._cond:
            self._check_usable()
            self.engine.check_capacity(len(self._streams), count)

    def generate(
        self,
        request_id: str,
        prompt_token_ids: Iterable[int],
        params: SamplingParams,
        *,
        priority: int = 0,
    ) -> Generation:
        """Admit one request now and return the stream of its chunks; the last has
        ``finished=True``. Lower ``priority`` runs first (see :mod:`kakehashi.engine.scheduler`).

        Raises at once ValueError for an impossible request, :class:`EngineOverloadedError`
        (503) when the running slots and the queue are full, and :class:`EngineError` if the
        engine failed or is shut down. Leaving the iteration early (``aclose()``, cancelling
        a read) aborts the request.
        """
        ids = list(prompt_token_ids)
        self.engine.validate_request(ids, params)
        stream = _Stream(asyncio.get_running_loop(), _Inbox())
        with self._cond:
            self._check_usable()
            if request_id in self._streams:
                raise ValueError(f"request {request_id!r} is already running")
            self.engine.check_capacity(len(self._streams))
            self._streams[request_id] = stream
            self._adds.append((request_id, ids, params, priority))
            self._cond.notify_all()
        self.start()
        return Generation(self, request_id, stream.inbox)

    def abort(self, request_id: str) -> None:
        """Ask the engine to stop a request; its stream ends with an ABORT chunk."""
        with self._cond:
            self._aborts.append(request_id)
            self._cond.notify_all()

    # -- engine thread ---------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise EngineError(self._error.message)
        if self._stopping:
            raise EngineError("the engine is shut down")

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (
                        self._stopping or self._adds or self._aborts or self.engine.has_unfinished()
                    ):
                        self._cond.wait()
                    adds, self._adds = self._adds, []
                    aborts, self._aborts = self._aborts, []
                    stopping = self._stopping
                    if stopping:
                        aborts.extend(self._streams)
                for request_id, ids, params, priority in adds:
                    self._add(request_id, ids, params, priority)
                for request_id in aborts:
                    self.engine.abort(request_id)
                try:
                    self._deliver(self.engine.step())
                except StepError as exc:
                    self._fail_requests(exc)
                if stopping:
                    return
        except Exception as exc:
            logger.exception("engine step failed")
            self._fail(EngineError(f"the engine failed: {exc}"))

    def _add(self, request_id: str, ids: list[int], params: SamplingParams, priority: int) -> None:
        try:
            self.engine.add_request(request_id, ids, params, priority=priority)
        except (ValueError, EngineOverloadedError) as exc:
            with self._cond:
                stream = self._streams.pop(request_id, None)
            if stream is not None:
                stream.put(exc)

    def _deliver(self, chunks: list[GenerationChunk]) -> None:
        """Hand a step's chunks to their event loops, in one call per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Inbox, Item]]] = {}
        with self._cond:
            for chunk in chunks:
                stream = self._streams.get(chunk.request_id)
                if stream is None:
                    continue
                if chunk.finished:
                    del self._streams[chunk.request_id]
                by_loop.setdefault(stream.loop, []).append((stream.inbox, chunk))
        for loop, deliveries in by_loop.items():
            _send(loop, deliveries)

    def _fail_requests(self, error: StepError) -> None:
        """Fail the requests of a failed step; the engine serves the others and new ones."""
        cause = error.__cause__ or error
        logger.error(
            "engine step failed; its %d request(s) get an error, the engine goes on",
            len(error.request_ids),
            exc_info=cause,
        )
        message = f"The engine failed on this request: {type(cause).__name__}: {cause}"
        with self._cond:
            streams = [self._streams.pop(rid, None) for rid in error.request_ids]
        for stream in streams:
            if stream is not None:
                stream.put(EngineError(message))

    def _fail(self, error: EngineError) -> None:
        with self._cond:
            self._error = error
            streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.put(EngineError(error.message))

"""The batch runner: takes batches from the store and runs their lines through the gateway.

One :class:`BatchRunner` runs in each server process. It claims active batches (at most
``max_batches`` at once), and for each one:

1. **validating**: reads the input file twice, once to check every line (failing the batch with
   ``errors.data[].line`` detail) and once to store the lines, then moves it to in_progress;
2. **in_progress**: runs pending lines through ``submit`` (the gateway, in process) with the
   owner's identity at :attr:`~kakehashi.gateway.context.Priority.BATCH`, keeping up to
   ``max_in_flight`` lines in flight across all its batches, so the local engine's batch stays
   full. Results are committed in small groups (every ``commit_seconds``), each with its ledger
   rows. A line refused for a rate limit or a full queue waits and runs again;
3. finishes the batch: completed, expired (the window passed), or cancelled.

A heartbeat renews the lease and reads the status every second, so a cancel asked on any
replica stops the work within about a second: lines in flight are abandoned (their engine
requests aborted) and the lines already committed stay in the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, Protocol, TypeVar

from kakehashi.gateway.context import Principal, Priority, RequestContext, UsageRecord
from kakehashi.platform.batches.model import (
    CANCELLED_MESSAGE,
    EXPIRED_MESSAGE,
    Batch,
    BatchError,
    BatchStatus,
    line_ids,
    response_line,
)
from kakehashi.platform.batches.store import (
    BatchStore,
    Claimed,
    LeaseLost,
    LineResult,
    PendingLine,
)
from kakehashi.platform.batches.usage import BatchUsageTap
from kakehashi.platform.batches.validate import InputReader
from kakehashi.platform.ledger import PricedUsage

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class LineResponse:
    """What one request of a batch got: its status and body; ``retry_after`` (seconds) when
    it was refused for now (a rate limit, a full queue) and should run again later."""

    status_code: int
    body: Mapping[str, Any]
    retry_after: float | None = None


class LineReply(Protocol):
    """What ``submit`` answers (:class:`LineResponse` is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def body(self) -> Mapping[str, Any]: ...

    @property
    def retry_after(self) -> float | None: ...


Submit = Callable[[str, Mapping[str, Any], RequestContext], Awaitable[LineReply]]
"""Runs one request body at an endpoint (``/v1/chat/completions``...) for a context."""
ModelCheck = Callable[[Principal, str, str], str | None]
"""Why ``principal`` may not use ``model`` at ``endpoint`` in a batch (None: it may)."""
Pricer = Callable[[UsageRecord], float]
"""What a batch line's usage record costs."""
OwnerCheck = Callable[[Principal], bool]
"""Whether a batch's owner may still make requests (False: revoked or expired key)."""


def owner_always_active(_principal: Principal) -> bool:
    """An owner check that trusts every owner."""
    return True


def allow_every_model(_principal: Principal, _endpoint: str, _model: str) -> str | None:
    """A model check that allows everything."""
    return None


def free(_usage: UsageRecord) -> float:
    """A pricer under which everything is free."""
    return 0.0


def default_worker_id() -> str:
    """A worker id unique to this process: host, pid and a random tail."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How hard a runner works and how it holds its batches."""

    max_in_flight: int = 64
    max_batches: int = 4
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 1.0
    poll_seconds: float = 1.0
    commit_seconds: float = 0.05
    commit_max: int = 256
    retry_max_seconds: float = 30.0
    max_retries: int = 20


@dataclass
class _Job:
    """One batch being worked."""

    batch: Batch
    principal: Principal
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    expired: bool = False
    lost: bool = False
    interrupted: bool = False
    owner_revoked: bool = False
    results: list[LineResult] = field(default_factory=list)
    wake_committer: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class BatchRunner:
    """Works batches from ``store`` through ``submit``; :meth:`start` and :meth:`stop` it with
    the server."""

    def __init__(
        self,
        store: BatchStore,
        submit: Submit,
        *,
        usage: BatchUsageTap,
        price: Pricer = free,
        check_model: ModelCheck = allow_every_model,
        on_spend: Callable[[Mapping[str, float]], None] | None = None,
        owner_active: OwnerCheck = owner_always_active,
        config: RunnerConfig | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.submit = submit
        self.usage = usage
        self.price = price
        self.check_model = check_model
        self.on_spend = on_spend
        self.owner_active = owner_active
        self.config = config or RunnerConfig()
        self.worker_id = worker_id or default_worker_id()
        self._jobs: dict[str, tuple[_Job, asyncio.Task[None]]] = {}
        self._slots = asyncio.Semaphore(self.config.max_in_flight)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: set[asyncio.Future[Any]] = set()
        self.lines_run = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start taking batches (call from within the event loop)."""
        if self._task is None:
            self._stopping = False
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._claim_loop())

    def notify(self) -> None:
        """A batch was created or cancelled here: look for work now, not at the next poll."""
        self._wake.set()

    def notify_threadsafe(self) -> None:
        """:meth:`notify` from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop: lines in flight are abandoned, finished ones committed, leases released."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        jobs = list(self._jobs.values())
        for job, _task in jobs:
            job.interrupted = True
            job.stop.set()
        if jobs:
            await asyncio.wait([task for _job, task in jobs], timeout=timeout)
        if self._threads:  # calls whose awaiting task was cancelled: the database stays theirs
            await asyncio.wait(list(self._threads), timeout=timeout)

    async def _blocking(self, call: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``call`` (a store call, which blocks) in a worker thread. Cancelling the awaiting
        task cannot stop the thread, so the call is shielded and tracked until it returns:
        :meth:`stop` waits for it, and nothing uses the database once the runner has stopped
        (a pooled connection checked out while the pool is disposed is never closed)."""
        future = asyncio.ensure_future(asyncio.to_thread(call, *args, **kwargs))
        self._threads.add(future)
        future.add_done_callback(self._call_done)
        return await asyncio.shield(future)

    def _call_done(self, future: asyncio.Future[Any]) -> None:
        self._threads.discard(future)
        if not future.cancelled():
            # Seen here, since a cancelled awaiter no longer sees it (shield drops its own
            # callback then): a lease lost meanwhile is no "exception never retrieved".
            future.exception()

    @property
    def active(self) -> list[str]:
        """Ids of the batches this runner is working."""
        return list(self._jobs)

    # -- claiming ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        config = self.config
        while not self._stopping:
            claimed: Claimed | None = None
            if len(self._jobs) < config.max_batches:
                try:
                    claimed = await self._blocking(
                        self.store.claim,
                        self.worker_id,
                        lease_seconds=config.lease_seconds,
                        exclude=list(self._jobs),
                    )
                except Exception as exc:  # the database is down: try again at the next poll
                    logger.error("batches: looking for work failed: %s", exc)
            if claimed is not None:
                job = _Job(claimed.batch, claimed.principal)
                task = asyncio.get_running_loop().create_task(self._work(job))
                self._jobs[job.batch.id] = (job, task)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), config.poll_seconds)

    # -- one batch --------------------------------------------------------------------------

    async def _work(self, job: _Job) -> None:
        batch_id = job.batch.id
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job))
        try:
            job.owner_revoked = not await self._blocking(self.owner_active, job.principal)
            status = job.batch.status
            if status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS) and self._expired(job):
                job.expired = True
            if status is BatchStatus.VALIDATING and not job.expired:
                status = await self._validate(job)
            if status is BatchStatus.IN_PROGRESS and not job.expired:
                status = await self._execute(job)
            if job.lost or job.interrupted:
                return
            if job.expired and status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
                await self._finish(job, BatchStatus.EXPIRED, ("batch_expired", EXPIRED_MESSAGE))
            elif status is BatchStatus.CANCELLING:
                await self._finish(
                    job, BatchStatus.CANCELLED, ("batch_cancelled", CANCELLED_MESSAGE)
                )
            elif status is BatchStatus.FINALIZING:
                await self._finish(job, BatchStatus.COMPLETED, None)
        except LeaseLost:
            job.lost = True
            logger.warning("batch %s: another worker holds it now; stopped here", batch_id)
        except Exception:
            logger.exception("batch %s: the runner failed; it will be taken up again", batch_id)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if not job.lost:
                with contextlib.suppress(Exception):
                    await self._blocking(self.store.release, batch_id, self.worker_id)
            self._jobs.pop(batch_id, None)
            self._wake.set()

    def _expired(self, job: _Job) -> bool:
        return self.store.clock() >= job.batch.expires_at

    async def _heartbeat(self, job: _Job) -> None:
        """Renew the lease and watch for a cancel and the end of the window."""
        config = self.config
        every = min(config.heartbeat_seconds, config.lease_seconds / 3)
        while True:
            await asyncio.sleep(every)
            try:
                status = await self._blocking(
                    self.store.heartbeat,
                    job.batch.id,
                    self.worker_id,
                    lease_seconds=config.lease_seconds,
                )
            except LeaseLost:
                job.lost = True
                job.stop.set()
                return
            except Exception as exc:  # the database is down: the lease may lapse meanwhile
                logger.error("batch %s: renewing the lease failed: %s", job.batch.id, exc)
                continue
            try:
                job.owner_revoked = not await self._blocking(self.owner_active, job.principal)
            except Exception as exc:  # the database is down: judge again next time
                logger.error("batch %s: checking its owner's key failed: %s", job.batch.id, exc)
            if status is BatchStatus.CANCELLING and not job.cancelled:
                job.cancelled = True
                job.stop.set()
            if self._expired(job) and not job.expired:
                job.expired = True
                job.stop.set()

    # -- validating -------------------------------------------------------------------------

    async def _validate(self, job: _Job) -> BatchStatus:
        batch, principal = job.batch, job.principal
        store = self.store

        def check(model: str) -> str | None:
            return self.check_model(principal, batch.endpoint, model)

        def validate() -> BatchStatus:
            try:
                first = InputReader(batch.endpoint, check_model=check)
                for _line in first.read(store.files.read_content(batch.input_file_id)):
                    pass
            except Exception as exc:  # the input file is gone, or unreadable
                logger.warning("batch %s: cannot read its input file: %s", batch.id, exc)
                errors = [
                    BatchError(
                        "invalid_file",
                        f"The input file {batch.input_file_id} could not be read; it may have "
                        "been deleted.",
                        "input_file_id",
                    )
                ]
                return self._failed(store.fail(batch.id, self.worker_id, errors))
            if not first.ok:
                return self._failed(
                    store.fail(batch.id, self.worker_id, first.errors, total=first.line_count)
                )
            second = InputReader(batch.endpoint, check_model=check)
            lines = second.read(store.files.read_content(batch.input_file_id))
            started = store.start(
                batch.id,
                self.worker_id,
                lines,
                model=first.model,
                lease_seconds=self.config.lease_seconds,
            )
            return BatchStatus.IN_PROGRESS if started else BatchStatus.CANCELLING

        status = await self._blocking(validate)
        if status is BatchStatus.CANCELLING:
            job.cancelled = True
        return status

    @staticmethod
    def _failed(failed: bool) -> BatchStatus:
        return BatchStatus.FAILED if failed else BatchStatus.CANCELLING

    # -- running lines ----------------------------------------------------------------------

    async def _execute(self, job: _Job) -> BatchStatus:
        committer = asyncio.get_running_loop().create_task(self._commit_loop(job))
        tasks: set[asyncio.Task[None]] = set()
        try:
            for _round in range(3):  # a line whose task failed unexpectedly gets two more tries
                await self._dispatch(job, tasks)
                await _all_or_stop(tasks, job.stop)
                if job.stop.is_set():
                    break
                await self._flush(job)
                remaining = await self._blocking(self.store.pending, job.batch.id, limit=1)
                if not remaining:
                    break
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            job.closing = True  # the committer writes what is left, then ends
            job.wake_committer.set()
            await committer
        if job.lost:
            raise LeaseLost(job.batch.id)
        if job.cancelled:
            return BatchStatus.CANCELLING
        if job.expired or job.interrupted:
            return BatchStatus.IN_PROGRESS
        await self._blocking(
            self.store.mark_finalizing,
            job.batch.id,
            self.worker_id,
            lease_seconds=self.config.lease_seconds,
        )
        return BatchStatus.FINALIZING

    async def _dispatch(self, job: _Job, tasks: set[asyncio.Task[None]]) -> None:
        """Start a task for every pending line, as in-flight slots come free."""
        loop = asyncio.get_running_loop()
        after = 0
        while not job.stop.is_set():
            lines = await self._blocking(self.store.pending, job.batch.id, after=after)
            if not lines:
                return
            for line in lines:
                if not await self._slot(job):
                    return
                task = loop.create_task(self._run_line(job, line))
                tasks.add(task)
                task.add_done_callback(self._line_done(tasks))
            after = lines[-1].line_no

    def _line_done(self, tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self._slots.release()
            if not task.cancelled() and task.exception() is not None:
                logger.error("a batch line failed unexpectedly", exc_info=task.exception())

        return done

    async def _slot(self, job: _Job) -> bool:
        """Wait for an in-flight slot; False if the job was told to stop meanwhile."""
        if job.stop.is_set():
            return False
        acquire = asyncio.ensure_future(self._slots.acquire())
        if not acquire.done():
            stopped = asyncio.ensure_future(job.stop.wait())
            await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        if not acquire.done():
            acquire.cancel()
            try:
                await acquire
            except asyncio.CancelledError:
                return False
        if job.stop.is_set():
            self._slots.release()
            return False
        return True

    async def _run_line(self, job: _Job, line: PendingLine) -> None:
        batch = job.batch
        _line_id, request_id = line_ids(batch.id, line.custom_id)
        ctx = RequestContext(job.principal, request_id, priority=Priority.BATCH, batch_id=batch.id)
        body = json.loads(line.body)
        records: list[UsageRecord] = []
        wait = 0.25
        response: LineReply = LineResponse(500, _server_error())
        for attempt in range(self.config.max_retries + 1):
            if job.owner_revoked:  # answered as the same request over HTTP would be
                response = LineResponse(401, _revoked_key())
                break
            with self.usage.capture(request_id) as captured:
                try:
                    response = await self.submit(batch.endpoint, body, ctx)
                except Exception:
                    logger.exception("batch %s line %d: the request failed", batch.id, line.line_no)
                    response = LineResponse(500, _server_error())
                records.extend(captured)
            if response.retry_after is None or attempt == self.config.max_retries:
                break
            wait = min(max(wait * 2, response.retry_after), self.config.retry_max_seconds)
            await asyncio.sleep(wait)
        priced = [
            PricedUsage(replace(record, attempt=number), self.price(record))
            for number, record in enumerate(records, start=1)
        ]
        output = response_line(batch.id, line.custom_id, response.status_code, response.body)
        ok = 200 <= response.status_code < 300
        job.results.append(
            LineResult(line.line_no, json.dumps(output, ensure_ascii=False), ok, priced)
        )
        self.lines_run += 1
        if len(job.results) >= self.config.commit_max:
            job.wake_committer.set()

    # -- committing -------------------------------------------------------------------------

    async def _commit_loop(self, job: _Job) -> None:
        """Commit results every ``commit_seconds`` (or once ``commit_max`` wait), and what is
        left once the job closes; the only writer of a job's results."""
        while True:
            closing = job.closing
            job.wake_committer.clear()
            if not closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(job.wake_committer.wait(), self.config.commit_seconds)
            try:
                await self._flush(job)
            except LeaseLost:
                job.lost = True
                job.stop.set()
                return
            except Exception as exc:  # the database is down: keep the results, try again
                logger.error("batch %s: committing results failed: %s", job.batch.id, exc)
                if closing and job.interrupted:
                    return  # shutting down: the lines run again wherever the batch goes next
                await asyncio.sleep(0.5)
                continue
            if closing:
                return

    async def _flush(self, job: _Job) -> None:
        """Commit the results gathered so far (kept for another try if the commit fails);
        one commit at a time."""
        async with job.commit_lock:
            if not job.results:
                return
            results, job.results = job.results, []
            try:
                spend = await self._blocking(
                    self.store.commit_results,
                    job.batch.id,
                    self.worker_id,
                    results,
                    lease_seconds=self.config.lease_seconds,
                )
            except LeaseLost:
                raise
            except BaseException:
                job.results[:0] = results
                raise
        if spend and self.on_spend is not None:
            self.on_spend(spend)

    # -- finishing --------------------------------------------------------------------------

    async def _finish(self, job: _Job, status: BatchStatus, unrun: tuple[str, str] | None) -> None:
        finished = await self._blocking(
            self.store.finish,
            job.batch,
            self.worker_id,
            status,
            unrun=unrun,
            lease_seconds=self.config.lease_seconds,
        )
        counts = finished.request_counts
        logger.info(
            "batch %s %s: %d of %d lines succeeded, %d failed",
            finished.id,
            finished.status.value,
            counts.completed,
            counts.total,
            counts.failed,
        )


async def _all_or_stop(tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Wait until every task in ``tasks`` is done, or ``stop`` is set."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while tasks and not stop.is_set():
            await asyncio.wait({*tasks, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()


def _revoked_key() -> dict[str, Any]:
    return {
        "error": {
            "message": "The API key that created this batch has been revoked or has expired.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def _server_error() -> dict[str, Any]:
    return {
        "error": {
            "message": "The server had an error while processing this request.",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }

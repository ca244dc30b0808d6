"""Batches and their lines in the platform database.

Durability rests on three rules:

- **One worker per batch.** A runner works a batch only while it holds the batch's lease
  (``lease_owner`` and ``lease_expires_ms``). :meth:`BatchStore.claim` takes a free or lapsed
  lease with one conditional ``UPDATE``, so of several replicas exactly one wins; a worker
  that dies stops renewing, and another claims the batch once the lease lapses.
- **Results commit with their state and their bill.** :meth:`BatchStore.commit_results`
  marks lines done, stores their output lines, adds their ledger rows and bumps the counts in
  one transaction, and only after checking (and renewing) the lease inside that transaction. A
  line's result is therefore either committed once with its ledger rows, or not at all (and
  the line runs again); ledger rows also carry the line's fixed request id, which the ledger
  keeps unique.
- **Finishing is one transaction.** The output and error files are written to disk first and
  become visible, with the final status, in a single commit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from kakehashi.errors import ConflictError, NotFoundError
from kakehashi.gateway.context import Principal
from kakehashi.platform.batches.model import (
    ACTIVE_STATUSES,
    COMPLETION_WINDOWS,
    Batch,
    BatchError,
    BatchStatus,
    RequestCounts,
    error_line,
    principal_from_json,
    principal_to_json,
)
from kakehashi.platform.batches.validate import InputLine
from kakehashi.platform.files import FileStore, FileWriter, new_id
from kakehashi.platform.ledger import PricedUsage, write_usage
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database

INSERT_CHUNK = 2000


class _NoLongerValidating(Exception):
    """Rolls back the lines of a batch cancelled while it was validated."""


class LeaseLost(Exception):
    """Another worker holds the batch now: stop working it."""


@dataclass(frozen=True, slots=True)
class PendingLine:
    """A line still to run."""

    line_no: int
    custom_id: str
    body: str


@dataclass(frozen=True, slots=True)
class LineResult:
    """A line that ran: its output line (JSON), whether it succeeded (output file) or not
    (error file), its ledger rows, and the tokens it used."""

    line_no: int
    output: str
    ok: bool
    usage: Sequence[PricedUsage] = ()

    @property
    def tokens(self) -> tuple[int, int, int]:
        """Prompt, cached and completion tokens of its successful attempts."""
        prompt = cached = completion = 0
        for item in self.usage:
            if item.usage.status == "success":
                prompt += item.usage.prompt_tokens
                cached += item.usage.cached_tokens
                completion += item.usage.completion_tokens
        return prompt, cached, completion


@dataclass(frozen=True, slots=True)
class Claimed:
    """A batch a worker holds, with the identity it runs as."""

    batch: Batch
    principal: Principal


def batch_not_found(batch_id: str) -> NotFoundError:
    """The 404 of a batch that does not exist or belongs to another key."""
    return NotFoundError(f"No such Batch object: {batch_id}", param="batch_id")


def _now_ms(clock: Callable[[], float]) -> int:
    return round(clock() * 1000)


def _from_row(row: sa.Row[Any]) -> Batch:
    return Batch(
        id=row.id,
        owner=row.owner,
        endpoint=row.endpoint,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=BatchStatus(row.status),
        created_at=row.created_at,
        expires_at=row.expires_at,
        in_progress_at=row.in_progress_at,
        finalizing_at=row.finalizing_at,
        completed_at=row.completed_at,
        failed_at=row.failed_at,
        expired_at=row.expired_at,
        cancelling_at=row.cancelling_at,
        cancelled_at=row.cancelled_at,
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        errors=tuple(BatchError(**e) for e in row.errors or ()),
        metadata=row.metadata,
        output_expires_after=row.output_expires_after,
        model=row.model,
        request_counts=RequestCounts(row.total, row.completed, row.failed),
        input_tokens=row.input_tokens,
        cached_tokens=row.cached_tokens,
        output_tokens=row.output_tokens,
    )


class BatchStore:
    """Batches of every key, their lines, and the leases of the workers running them."""

    def __init__(
        self, db: Database, files: FileStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.files = files
        self.clock = clock

    # -- the API's side --------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None = None,
        output_expires_after: int | None = None,
    ) -> Batch:
        """A new batch in ``validating``; the caller has checked its parameters."""
        now = int(self.clock())
        batch = Batch(
            id=new_id("batch_"),
            owner=principal.key_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[completion_window],
            metadata=dict(metadata) if metadata is not None else None,
            output_expires_after=output_expires_after,
        )
        with self.db.connection() as conn:
            conn.execute(
                tables.batches.insert().values(
                    id=batch.id,
                    owner=batch.owner,
                    principal=principal_to_json(principal),
                    endpoint=batch.endpoint,
                    input_file_id=batch.input_file_id,
                    completion_window=batch.completion_window,
                    status=batch.status.value,
                    created_at=batch.created_at,
                    expires_at=batch.expires_at,
                    metadata=batch.metadata,
                    output_expires_after=batch.output_expires_after,
                )
            )
        return batch

    def get(self, batch_id: str, *, owner: str | None = None) -> Batch:
        """The batch ``batch_id`` (of ``owner``, when given); a 404 otherwise."""
        t = tables.batches
        query = sa.select(t).where(t.c.id == batch_id)
        if owner is not None:
            query = query.where(t.c.owner == owner)
        with self.db.connection() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise batch_not_found(batch_id)
        return _from_row(row)

    def page(
        self, *, owner: str, after: str | None = None, limit: int = 20
    ) -> tuple[list[Batch], bool]:
        """A page of ``owner``'s batches, newest first, and whether more follow."""
        t = tables.batches
        query = sa.select(t).where(t.c.owner == owner)
        if after is not None:
            query = query.where(t.c.id < after)
        with self.db.connection() as conn:
            rows = conn.execute(query.order_by(t.c.id.desc()).limit(limit + 1)).all()
        return [_from_row(r) for r in rows[:limit]], len(rows) > limit

    def cancel(self, batch_id: str, *, owner: str) -> Batch:
        """Ask for a cancel: ``validating`` and ``in_progress`` batches become ``cancelling``
        (the runner finishes the cancel); a batch already cancelling or cancelled is returned
        as it is; any other is a 409."""
        t = tables.batches
        now = int(self.clock())
        with self.db.connection() as conn:
            conn.execute(
                t.update()
                .where(
                    t.c.id == batch_id,
                    t.c.owner == owner,
                    t.c.status.in_([BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS]),
                )
                .values(status=BatchStatus.CANCELLING.value, cancelling_at=now)
            )
        batch = self.get(batch_id, owner=owner)
        if batch.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            raise ConflictError(
                f"Cannot cancel a batch with status '{batch.status.value}'.",
                code="batch_not_cancellable",
            )
        return batch

    # -- leases ----------------------------------------------------------------------------

    def claim(
        self, worker: str, *, lease_seconds: float, exclude: Iterable[str] = ()
    ) -> Claimed | None:
        """Take the lease of one active batch that nobody holds (or whose holder's lease
        lapsed), oldest first; None when there is none."""
        t = tables.batches
        now = _now_ms(self.clock)
        free = sa.or_(t.c.lease_owner.is_(None), t.c.lease_expires_ms < now)
        skip = list(exclude)
        query = sa.select(t.c.id).where(t.c.status.in_([s.value for s in ACTIVE_STATUSES]), free)
        if skip:
            query = query.where(t.c.id.not_in(skip))
        with self.db.connection() as conn:
            candidates = conn.execute(query.order_by(t.c.id).limit(8)).scalars().all()
        for batch_id in candidates:
            with self.db.connection() as conn:
                won = conn.execute(
                    t.update()
                    .where(t.c.id == batch_id, free)
                    .values(lease_owner=worker, lease_expires_ms=now + round(lease_seconds * 1000))
                ).rowcount
                if won != 1:
                    continue
                row = conn.execute(sa.select(t).where(t.c.id == batch_id)).one()
            return Claimed(_from_row(row), principal_from_json(row.principal))
        return None

    def _renew(self, conn: Connection, batch_id: str, worker: str, lease_seconds: float) -> None:
        t = tables.batches
        until = _now_ms(self.clock) + round(lease_seconds * 1000)
        renewed = conn.execute(
            t.update()
            .where(t.c.id == batch_id, t.c.lease_owner == worker)
            .values(lease_expires_ms=until)
        ).rowcount
        if renewed != 1:
            raise LeaseLost(batch_id)

    def heartbeat(self, batch_id: str, worker: str, *, lease_seconds: float) -> BatchStatus:
        """Renew the lease and read the batch's status (a cancel shows here);
        :class:`LeaseLost` if another worker holds it."""
        with self.db.connection() as conn:
            self._renew(conn, batch_id, worker, lease_seconds)
            status = conn.execute(
                sa.select(tables.batches.c.status).where(tables.batches.c.id == batch_id)
            ).scalar_one()
        return BatchStatus(status)

    def release(self, batch_id: str, worker: str) -> None:
        """Give the lease up (so another worker may take the batch at once)."""
        t = tables.batches
        with self.db.connection() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == batch_id, t.c.lease_owner == worker)
                .values(lease_owner=None, lease_expires_ms=None)
            )

    # -- validating ------------------------------------------------------------------------

    def fail(
        self, batch_id: str, worker: str, errors: Sequence[BatchError], *, total: int = 0
    ) -> bool:
        """``validating`` to ``failed`` with ``errors``; False if the batch is no longer
        validating (it was cancelled meanwhile)."""
        t = tables.batches
        with self.db.connection() as conn:
            done = conn.execute(
                t.update()
                .where(
                    t.c.id == batch_id,
                    t.c.lease_owner == worker,
                    t.c.status == BatchStatus.VALIDATING.value,
                )
                .values(
                    status=BatchStatus.FAILED.value,
                    failed_at=int(self.clock()),
                    errors=[e.to_dict() for e in errors],
                    total=total,
                    lease_owner=None,
                    lease_expires_ms=None,
                )
            ).rowcount
        return done == 1

    def start(
        self,
        batch_id: str,
        worker: str,
        lines: Iterable[InputLine],
        *,
        model: str | None,
        lease_seconds: float,
    ) -> bool:
        """Store the lines and move ``validating`` to ``in_progress``, in one transaction;
        False if the batch is no longer validating (it was cancelled meanwhile)."""
        try:
            self._store_lines(batch_id, worker, lines, model=model, lease_seconds=lease_seconds)
        except _NoLongerValidating:
            return False
        return True

    def _store_lines(
        self,
        batch_id: str,
        worker: str,
        lines: Iterable[InputLine],
        *,
        model: str | None,
        lease_seconds: float,
    ) -> None:
        t, lt = tables.batches, tables.batch_lines
        total = 0
        with self.db.connection() as conn:
            self._renew(conn, batch_id, worker, lease_seconds)
            conn.execute(lt.delete().where(lt.c.batch_id == batch_id))
            chunk: list[dict[str, Any]] = []
            for line in lines:
                chunk.append(
                    {
                        "batch_id": batch_id,
                        "line_no": line.line_no,
                        "custom_id": line.custom_id,
                        "body": line.body,
                        "done": False,
                    }
                )
                if len(chunk) >= INSERT_CHUNK:
                    conn.execute(lt.insert(), chunk)
                    total += len(chunk)
                    chunk = []
            if chunk:
                conn.execute(lt.insert(), chunk)
                total += len(chunk)
            started = conn.execute(
                t.update()
                .where(t.c.id == batch_id, t.c.status == BatchStatus.VALIDATING.value)
                .values(
                    status=BatchStatus.IN_PROGRESS.value,
                    in_progress_at=int(self.clock()),
                    total=total,
                    model=model,
                )
            ).rowcount
            if started != 1:
                raise _NoLongerValidating(batch_id)

    # -- running ---------------------------------------------------------------------------

    def pending(self, batch_id: str, *, after: int = 0, limit: int = 500) -> list[PendingLine]:
        """Lines not yet done, in file order, after line ``after``."""
        lt = tables.batch_lines
        with self.db.connection() as conn:
            rows = conn.execute(
                sa.select(lt.c.line_no, lt.c.custom_id, lt.c.body)
                .where(lt.c.batch_id == batch_id, lt.c.done.is_(False), lt.c.line_no > after)
                .order_by(lt.c.line_no)
                .limit(limit)
            ).all()
        return [PendingLine(r.line_no, r.custom_id, r.body) for r in rows]

    def commit_results(
        self,
        batch_id: str,
        worker: str,
        results: Sequence[LineResult],
        *,
        lease_seconds: float,
    ) -> dict[str, float]:
        """Commit ``results`` with their ledger rows and counts, in one transaction, if
        ``worker`` still holds the batch (else :class:`LeaseLost`, and nothing is written).
        Lines already done are skipped. Returns the USD each key was charged."""
        if not results:
            return {}
        t, lt = tables.batches, tables.batch_lines
        with self.db.connection() as conn:
            # Renewing first locks the batch row (PostgreSQL) or the database (SQLite): no
            # other worker can claim the batch, or commit lines of it, until this commits.
            self._renew(conn, batch_id, worker, lease_seconds)
            numbers = [r.line_no for r in results]
            already = set(
                conn.execute(
                    sa.select(lt.c.line_no).where(
                        lt.c.batch_id == batch_id, lt.c.line_no.in_(numbers), lt.c.done.is_(True)
                    )
                ).scalars()
            )
            fresh = [r for r in results if r.line_no not in already]
            if not fresh:
                return {}
            conn.execute(
                lt.update()
                .where(lt.c.batch_id == batch_id, lt.c.line_no == sa.bindparam("n"))
                .values(done=True, ok=sa.bindparam("ok_"), result=sa.bindparam("out")),
                [{"n": r.line_no, "ok_": r.ok, "out": r.output} for r in fresh],
            )
            spend = write_usage(conn, [item for r in fresh for item in r.usage])
            prompt = cached = completion = 0
            for r in fresh:
                p, c, o = r.tokens
                prompt, cached, completion = prompt + p, cached + c, completion + o
            ok = sum(1 for r in fresh if r.ok)
            conn.execute(
                t.update()
                .where(t.c.id == batch_id)
                .values(
                    completed=t.c.completed + ok,
                    failed=t.c.failed + (len(fresh) - ok),
                    input_tokens=t.c.input_tokens + prompt,
                    cached_tokens=t.c.cached_tokens + cached,
                    output_tokens=t.c.output_tokens + completion,
                )
            )
        return spend

    # -- finishing -------------------------------------------------------------------------

    def _outputs(self, batch_id: str, *, ok: bool) -> Iterator[str]:
        lt = tables.batch_lines
        after = 0
        while True:
            with self.db.connection() as conn:
                rows = conn.execute(
                    sa.select(lt.c.line_no, lt.c.result)
                    .where(lt.c.batch_id == batch_id, lt.c.done.is_(True), lt.c.ok.is_(ok))
                    .where(lt.c.line_no > after)
                    .order_by(lt.c.line_no)
                    .limit(INSERT_CHUNK)
                ).all()
            for row in rows:
                yield row.result
            if len(rows) < INSERT_CHUNK:
                return
            after = rows[-1].line_no

    def _unrun(self, batch_id: str) -> Iterator[str]:
        lt = tables.batch_lines
        after = 0
        while True:
            with self.db.connection() as conn:
                rows = conn.execute(
                    sa.select(lt.c.line_no, lt.c.custom_id)
                    .where(lt.c.batch_id == batch_id, lt.c.done.is_(False), lt.c.line_no > after)
                    .order_by(lt.c.line_no)
                    .limit(INSERT_CHUNK)
                ).all()
            yield from (row.custom_id for row in rows)
            if len(rows) < INSERT_CHUNK:
                return
            after = rows[-1].line_no

    def _write_file(self, lines: Iterable[str]) -> FileWriter | None:
        """The lines as a finished file, or None when there are none."""
        written = self.files.writer(limit=2**62)
        try:
            for line in lines:
                written.write(line.encode() + b"\n")
            if written.size == 0:
                written.discard()
                return None
            written.finish()
        except BaseException:
            written.discard()
            raise
        return written

    def mark_finalizing(self, batch_id: str, worker: str, *, lease_seconds: float) -> None:
        """``in_progress`` to ``finalizing`` (every line is done)."""
        t = tables.batches
        with self.db.connection() as conn:
            self._renew(conn, batch_id, worker, lease_seconds)
            conn.execute(
                t.update()
                .where(t.c.id == batch_id, t.c.status == BatchStatus.IN_PROGRESS.value)
                .values(status=BatchStatus.FINALIZING.value, finalizing_at=int(self.clock()))
            )

    def finish(
        self,
        batch: Batch,
        worker: str,
        status: BatchStatus,
        *,
        unrun: tuple[str, str] | None = None,
        lease_seconds: float,
    ) -> Batch:
        """Write the output and error files and move the batch to ``status`` (completed,
        expired or cancelled) in one transaction, releasing the lease. ``unrun`` is the
        ``(code, message)`` error line that lines never run get in the error file."""
        unrun_lines: Iterable[str] = ()
        if unrun is not None:
            code, message = unrun
            unrun_lines = (
                json.dumps(error_line(batch.id, custom_id, code, message))
                for custom_id in self._unrun(batch.id)
            )
        output = self._write_file(self._outputs(batch.id, ok=True))
        errors = self._write_file(_chain(self._outputs(batch.id, ok=False), unrun_lines))
        t = tables.batches
        stamp = {
            BatchStatus.COMPLETED: "completed_at",
            BatchStatus.EXPIRED: "expired_at",
            BatchStatus.CANCELLED: "cancelled_at",
        }[status]
        try:
            with self.db.connection() as conn:
                self._renew(conn, batch.id, worker, lease_seconds)
                ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
                for name, written, suffix in (
                    ("output_file_id", output, "output"),
                    ("error_file_id", errors, "error"),
                ):
                    if written is not None:
                        ids[name] = self.files.record(
                            conn,
                            written,
                            owner=batch.owner,
                            filename=f"{batch.id}_{suffix}.jsonl",
                            purpose="batch_output",
                            expires_after=batch.output_expires_after,
                        ).id
                conn.execute(
                    t.update()
                    .where(t.c.id == batch.id)
                    .values(
                        status=status.value,
                        lease_owner=None,
                        lease_expires_ms=None,
                        **{stamp: int(self.clock())},
                        **ids,
                    )
                )
        except BaseException:
            for written in (output, errors):
                if written is not None:
                    self.files.remove_content(written.id)
            raise
        self.drop_lines(batch.id)
        return self.get(batch.id)

    def drop_lines(self, batch_id: str) -> None:
        """Delete a finished batch's lines (its files hold the results now)."""
        lt = tables.batch_lines
        with self.db.connection() as conn:
            conn.execute(lt.delete().where(lt.c.batch_id == batch_id))


def _chain(*parts: Iterable[str]) -> Iterator[str]:
    for part in parts:
        yield from part

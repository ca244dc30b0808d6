"""Files: metadata in the platform database, content under ``<data dir>/files/``.

Content is written in chunks as it arrives (:class:`FileWriter`), to a temporary name that
becomes the file's id once the whole upload is in and its row is committed, so a file is never
held whole in memory and a half-written one is never visible. Every file belongs to the key that
uploaded it (or to the batch owner, for batch output); another key sees a 404, exactly as for a
file that does not exist. Batch input files expire after 30 days, as at OpenAI; the retention
job purges expired files (:meth:`FileStore.purge_expired`).

Several replicas sharing one PostgreSQL must share the files directory too (a network volume).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection

from kakehashi.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 512 * 1024 * 1024
"""The largest file accepted, as at OpenAI."""
BATCH_INPUT_TTL_SECONDS = 30 * 86_400
"""Batch input files expire 30 days after upload, as at OpenAI."""
MIN_EXPIRES_AFTER, MAX_EXPIRES_AFTER = 3600, 30 * 86_400
"""The bounds of ``expires_after.seconds``."""

CREATE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
"""The purposes a client may upload with."""
OUTPUT_PURPOSES = ("batch_output", "assistants_output", "fine-tune-results")
"""Purposes only the server gives files (batch results)."""

Order = Literal["asc", "desc"]


def new_id(prefix: str) -> str:
    """``prefix`` then 24 hex digits, the first 14 the creation time in microseconds: ids sort
    by creation time, so lists page by id."""
    return f"{prefix}{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


@dataclass(frozen=True, slots=True)
class FileObject:
    """One stored file, as OpenAI's ``file`` object describes it."""

    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    status: str = "processed"

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's ``OpenAIFile`` shape (``expires_at`` only when the file expires)."""
        body = {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
        }
        return {key: value for key, value in body.items() if value is not None}


def _from_row(row: sa.Row[Any]) -> FileObject:
    return FileObject(
        id=row.id,
        owner=row.owner,
        filename=row.filename,
        purpose=row.purpose,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        status=row.status,
    )


def check_purpose(purpose: str | None) -> str:
    """``purpose`` if a client may upload with it, else a 400 naming the allowed ones."""
    if not purpose:
        raise InvalidRequestError(
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if purpose not in CREATE_PURPOSES:
        allowed = ", ".join(f"'{p}'" for p in CREATE_PURPOSES)
        raise InvalidRequestError(
            f"'{purpose}' is not one of [{allowed}] - 'purpose'",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def check_expires_after(anchor: str | None, seconds: str | int | None) -> int | None:
    """The seconds of an ``expires_after`` policy (None when absent), or a named 400."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequestError(
            "Invalid 'expires_after.anchor': the only supported anchor is 'created_at'.",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        value = int(seconds) if seconds is not None else None
    except (TypeError, ValueError):
        value = None
    if value is None or not MIN_EXPIRES_AFTER <= value <= MAX_EXPIRES_AFTER:
        raise InvalidRequestError(
            f"Invalid 'expires_after.seconds': expected an integer between {MIN_EXPIRES_AFTER} "
            f"and {MAX_EXPIRES_AFTER}, but got {seconds!r}.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return value


def file_not_found(file_id: str) -> NotFoundError:
    """The 404 of a file that does not exist or belongs to another key."""
    return NotFoundError(f"No such File object: {file_id}", param="file_id")


def too_large(limit: int) -> RequestTooLargeError:
    """The 413 of a file over ``limit`` bytes."""
    return RequestTooLargeError(
        f"The file is larger than the maximum of {limit} bytes ({limit // (1024 * 1024)} MB).",
        param="file",
        code="file_too_large",
    )


class FileWriter:
    """A file being written: :meth:`write` chunks, then :meth:`commit` (or :meth:`discard`).

    Raises :class:`~kakehashi.errors.RequestTooLargeError` (413) as soon as the content passes
    the store's limit, having written no more than the limit.
    """

    def __init__(self, store: FileStore, file_id: str, limit: int) -> None:
        self.store = store
        self.id = file_id
        self.limit = limit
        self.size = 0
        self.path = store.root / f".{file_id}.part"
        store.root.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        if self.size + len(chunk) > self.limit:
            self.discard()
            raise too_large(self.limit)
        self._out.write(chunk)
        self.size += len(chunk)

    def finish(self) -> Path:
        """Close the content and move it to its final name (not yet visible: no row)."""
        self._out.close()
        final = self.store.content_path(self.id)
        os.replace(self.path, final)
        return final

    def discard(self) -> None:
        """Drop what was written."""
        self._out.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._out.closed:
            self.discard()


class FileStore:
    """Files of every key: metadata rows and content files under ``root``."""

    def __init__(
        self,
        db: Database,
        root: Path,
        *,
        max_bytes: int = MAX_FILE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.clock = clock

    def content_path(self, file_id: str) -> Path:
        """Where the content of ``file_id`` lives."""
        return self.root / file_id

    # -- writing ---------------------------------------------------------------------------

    def writer(self, *, limit: int | None = None) -> FileWriter:
        """A :class:`FileWriter` for a new file id."""
        return FileWriter(self, new_id("file-"), self.max_bytes if limit is None else limit)

    def record(
        self,
        conn: Connection,
        written: FileWriter,
        *,
        owner: str,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
    ) -> FileObject:
        """Insert the row of a finished writer inside ``conn``'s transaction: from its commit
        on, the file is visible. ``expires_after`` (seconds) defaults to 30 days for
        ``batch`` files and never for the others."""
        now = int(self.clock())
        if expires_after is None and purpose == "batch":
            expires_after = BATCH_INPUT_TTL_SECONDS
        item = FileObject(
            id=written.id,
            owner=owner,
            filename=filename[:255],
            purpose=purpose,
            bytes=written.size,
            created_at=now,
            expires_at=now + expires_after if expires_after is not None else None,
        )
        conn.execute(
            tables.files.insert().values(
                id=item.id,
                owner=item.owner,
                filename=item.filename,
                purpose=item.purpose,
                bytes=item.bytes,
                created_at=item.created_at,
                expires_at=item.expires_at,
                status=item.status,
            )
        )
        return item

    def commit(
        self,
        written: FileWriter,
        *,
        owner: str,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
    ) -> FileObject:
        """Finish ``written`` and make it visible as a file of ``owner``."""
        written.finish()
        try:
            with self.db.connection() as conn:
                return self.record(
                    conn,
                    written,
                    owner=owner,
                    filename=filename,
                    purpose=purpose,
                    expires_after=expires_after,
                )
        except BaseException:
            self.remove_content(written.id)
            raise

    def create(
        self,
        chunks: Iterable[bytes],
        *,
        owner: str,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
    ) -> FileObject:
        """A file from ``chunks``, in one call."""
        with self.writer() as written:
            for chunk in chunks:
                written.write(chunk)
            return self.commit(
                written,
                owner=owner,
                filename=filename,
                purpose=purpose,
                expires_after=expires_after,
            )

    # -- reading ---------------------------------------------------------------------------

    def _visible(self, owner: str) -> Any:
        t = tables.files
        now = int(self.clock())
        return sa.and_(t.c.owner == owner, sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now))

    def get(self, file_id: str, *, owner: str) -> FileObject:
        """``owner``'s file ``file_id``; a 404 if it does not exist, has expired, or is
        another key's."""
        t = tables.files
        with self.db.connection() as conn:
            row = conn.execute(
                sa.select(t).where(t.c.id == file_id, self._visible(owner))
            ).one_or_none()
        if row is None:
            raise file_not_found(file_id)
        return _from_row(row)

    def page(
        self,
        *,
        owner: str,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = "desc",
    ) -> tuple[list[FileObject], bool]:
        """A page of ``owner``'s files, newest first (``order="desc"``), and whether more
        follow; ``after`` is the id the previous page ended with."""
        t = tables.files
        query = sa.select(t).where(self._visible(owner))
        if purpose is not None:
            query = query.where(t.c.purpose == purpose)
        if after is not None:
            query = query.where(t.c.id < after if order == "desc" else t.c.id > after)
        query = query.order_by(t.c.id.desc() if order == "desc" else t.c.id.asc())
        with self.db.connection() as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        return [_from_row(r) for r in rows[:limit]], len(rows) > limit

    def read(self, file_id: str, *, owner: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The content of ``owner``'s file ``file_id``, in chunks (404 as :meth:`get`)."""
        self.get(file_id, owner=owner)
        return self.read_content(file_id, chunk_size=chunk_size)

    def read_content(self, file_id: str, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The content of ``file_id`` without an ownership check (the server's own use)."""
        try:
            stream = self.content_path(file_id).open("rb")
        except FileNotFoundError:
            raise file_not_found(file_id) from None

        def chunks() -> Iterator[bytes]:
            with stream:
                while chunk := stream.read(chunk_size):
                    yield chunk

        return chunks()

    # -- deleting --------------------------------------------------------------------------

    def delete(self, file_id: str, *, owner: str) -> None:
        """Delete ``owner``'s file ``file_id`` (404 as :meth:`get`)."""
        t = tables.files
        with self.db.connection() as conn:
            gone = conn.execute(t.delete().where(t.c.id == file_id, self._visible(owner)))
        if gone.rowcount == 0:
            raise file_not_found(file_id)
        self.remove_content(file_id)

    def remove_content(self, file_id: str) -> None:
        """Remove the content of ``file_id`` if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.content_path(file_id).unlink()

    def purge_expired(self, *, batch_size: int = 1000) -> int:
        """Delete every expired file (row, then content); how many went."""
        t = tables.files
        now = int(self.clock())
        purged = 0
        while True:
            with self.db.connection() as conn:
                ids = (
                    conn.execute(
                        sa.select(t.c.id)
                        .where(t.c.expires_at.is_not(None), t.c.expires_at <= now)
                        .limit(batch_size)
                    )
                    .scalars()
                    .all()
                )
                if ids:
                    conn.execute(t.delete().where(t.c.id.in_(ids)))
            for file_id in ids:
                self.remove_content(file_id)
            purged += len(ids)
            if len(ids) < batch_size:
                return purged

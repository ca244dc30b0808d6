"""The log of ``kakehashi chat``: every exchange in a SQLite file, grouped in conversations, so
that a conversation can be resumed and past ones listed and searched (as simonw's ``llm`` keeps
its ``logs.db``).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOG_FILE = "logs.db"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    model TEXT NOT NULL,
    system TEXT,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_conversation ON responses (conversation_id, id);
"""


@dataclass(frozen=True)
class LoggedResponse:
    """One logged exchange."""

    id: int
    conversation_id: str
    model: str
    system: str | None
    prompt: str
    response: str
    prompt_tokens: int | None
    completion_tokens: int | None
    created: str


class LogError(Exception):
    """The log cannot be read or written (with a message that says why and where)."""


class ChatLog:
    """The conversations in one SQLite file (created on first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(self.path, timeout=10)) as db, db:
                db.row_factory = sqlite3.Row
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LogError(f"{self.path} was written by a newer kakehashi.")
                if version < SCHEMA_VERSION:
                    db.executescript(_SCHEMA)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                yield db
        except sqlite3.Error as exc:
            raise LogError(f"Cannot use the chat log {self.path}: {exc}") from None

    def new_conversation(self, model: str, first_prompt: str) -> str:
        """Start a conversation named after its first prompt; its id."""
        conversation_id = f"{int(time.time() * 1000):x}{uuid.uuid4().hex[:8]}"
        name = " ".join(first_prompt.split())[:60]
        with self._connect(create=True) as db:
            db.execute(
                "INSERT INTO conversations (id, name, model, created) VALUES (?, ?, ?, ?)",
                (conversation_id, name, model, _now()),
            )
        return conversation_id

    def record(
        self,
        conversation_id: str,
        *,
        model: str,
        system: str | None,
        prompt: str,
        response: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """Log one exchange of the conversation."""
        with self._connect(create=True) as db:
            db.execute(
                "INSERT INTO responses (conversation_id, model, system, prompt, response, "
                "prompt_tokens, completion_tokens, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    model,
                    system,
                    prompt,
                    response,
                    prompt_tokens,
                    completion_tokens,
                    _now(),
                ),
            )

    def last_conversation(self) -> str | None:
        """The id of the conversation with the latest exchange, if any."""
        if not self.path.exists():
            return None
        with self._connect(create=False) as db:
            row = db.execute(
                "SELECT conversation_id FROM responses ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def conversation(self, conversation_id: str) -> list[LoggedResponse]:
        """The exchanges of one conversation, oldest first (empty if there is none such)."""
        if not self.path.exists():
            return []
        with self._connect(create=False) as db:
            rows = db.execute(
                "SELECT * FROM responses WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return [LoggedResponse(**dict(row)) for row in rows]

    def search(self, *, query: str | None = None, limit: int = 10) -> list[LoggedResponse]:
        """The latest ``limit`` exchanges (whose prompt or response holds ``query``, if given),
        oldest first."""
        if not self.path.exists():
            return []
        where, args = "", []
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where = "WHERE prompt LIKE ? ESCAPE '\\' OR response LIKE ? ESCAPE '\\'"
            args = [pattern + "%", pattern + "%"]
        with self._connect(create=False) as db:
            rows = db.execute(
                f"SELECT * FROM responses {where} ORDER BY id DESC LIMIT ?", [*args, limit]
            ).fetchall()
        return [LoggedResponse(**dict(row)) for row in reversed(rows)]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

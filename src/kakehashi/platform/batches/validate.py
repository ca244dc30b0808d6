"""Reading a batch input file: one request per JSONL line, checked as OpenAI checks it.

Each line must be a JSON object ``{"custom_id", "method": "POST", "url", "body"}`` whose
``url`` is the batch's endpoint, whose ``custom_id`` is unique in the file, and whose
``body.model`` the batch owner may use (lines may name different models). Blank lines are
skipped. A file with any bad line fails the batch with ``errors.data[]`` naming each line
(1-based), the first :data:`MAX_ERRORS` of them.

:class:`InputReader` reads the file as a stream of chunks and yields the good lines, so a large
file is never held whole in memory; its ``errors`` are complete once the iteration ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kakehashi.platform.batches.model import MAX_LINES, BatchError

MAX_ERRORS = 100
MAX_CUSTOM_ID = 512

ModelCheck = Callable[[str], str | None]
"""Says why the batch owner may not use a model (None: it may)."""


def any_model(_model: str) -> str | None:
    """A model check that allows everything."""
    return None


@dataclass(frozen=True, slots=True)
class InputLine:
    """A good line: its number in the file, its ``custom_id`` and its body (compact JSON)."""

    line_no: int
    custom_id: str
    model: str
    body: str


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream (without their newlines)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        yield from whole
    if rest:
        yield rest


@dataclass
class InputReader:
    """Yields the good lines of an input file; collects what is wrong with the others."""

    endpoint: str
    check_model: ModelCheck = any_model
    max_lines: int = MAX_LINES
    errors: list[BatchError] = field(default_factory=list)
    error_count: int = 0
    line_count: int = 0
    models: set[str] = field(default_factory=set)

    def read(self, chunks: Iterable[bytes]) -> Iterator[InputLine]:
        """The good lines of the file ``chunks`` make up, in order."""
        seen: set[str] = set()
        checked: dict[str, str | None] = {}
        for number, raw in enumerate(_lines(chunks), start=1):
            if not raw.strip():
                continue
            self.line_count += 1
            if self.line_count > self.max_lines:
                self.errors.insert(
                    0,
                    BatchError(
                        "too_many_requests",
                        f"The batch input file has more than {self.max_lines:,} requests; "
                        "split it into several batches.",
                    ),
                )
                self.error_count += 1
                return
            line = self._check(raw, number, seen, checked)
            if line is not None:
                yield line
        if self.line_count == 0:
            self._fail(BatchError("empty_file", "The batch input file is empty."))

    @property
    def ok(self) -> bool:
        """Whether every line read so far is good."""
        return self.error_count == 0

    @property
    def model(self) -> str | None:
        """The model every line names, if they all name one."""
        return next(iter(self.models)) if len(self.models) == 1 else None

    def _fail(self, error: BatchError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)

    def _check(
        self, raw: bytes, number: int, seen: set[str], checked: dict[str, str | None]
    ) -> InputLine | None:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            self._fail(
                BatchError(
                    "invalid_json_line",
                    "This line is not parseable as valid JSON object.",
                    line=number,
                )
            )
            return None
        custom_id = data.get("custom_id")
        problem = self._field_problem(data, custom_id)
        if problem is not None:
            code, message, param = problem
            self._fail(BatchError(code, message, param, number))
            return None
        assert isinstance(custom_id, str)
        body: dict[str, Any] = data["body"]
        model: str = body["model"]
        if custom_id in seen:
            self._fail(
                BatchError(
                    "duplicate_custom_id",
                    f"The custom_id '{custom_id}' is a duplicate of an earlier line's: each "
                    "request in a batch needs its own custom_id.",
                    "custom_id",
                    number,
                )
            )
            return None
        seen.add(custom_id)
        if model not in checked:
            checked[model] = self.check_model(model)
        refusal = checked[model]
        if refusal is not None:
            self._fail(BatchError("model_not_found", refusal, "body.model", number))
            return None
        self.models.add(model)
        compact = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return InputLine(number, custom_id, model, compact)

    def _field_problem(
        self, data: dict[str, Any], custom_id: object
    ) -> tuple[str, str, str] | None:
        for name in ("custom_id", "method", "url", "body"):
            if name not in data:
                return (
                    "missing_required_parameter",
                    f"Missing required parameter: '{name}'.",
                    name,
                )
        if not isinstance(custom_id, str) or not custom_id:
            return ("invalid_value", "'custom_id' must be a non-empty string.", "custom_id")
        if len(custom_id) > MAX_CUSTOM_ID:
            return (
                "invalid_value",
                f"'custom_id' is longer than {MAX_CUSTOM_ID} characters.",
                "custom_id",
            )
        if data["method"] != "POST":
            return (
                "invalid_method",
                f"The method {data['method']!r} is not supported: batch requests use 'POST'.",
                "method",
            )
        if data["url"] != self.endpoint:
            return (
                "invalid_url",
                f"The URL {data['url']!r} does not match the batch's endpoint '{self.endpoint}'.",
                "url",
            )
        body = data["body"]
        if not isinstance(body, dict):
            return ("invalid_value", "'body' must be a JSON object.", "body")
        if "model" not in body:
            return (
                "missing_required_parameter",
                "Missing required parameter: 'model'.",
                "body.model",
            )
        if not isinstance(body["model"], str) or not body["model"]:
            return ("invalid_value", "'body.model' must be a non-empty string.", "body.model")
        if body.get("stream"):
            return (
                "invalid_value",
                "Streaming is not supported in a batch: leave 'stream' out or set it to false.",
                "body.stream",
            )
        return None

"""Summaries of long documents: the main text of a page or file, split by tokens to fit the
model, summarized chunk by chunk, then the summaries summarized (map-reduce) until one
request holds them all; the final summary is streamed.

HTML (a URL, or a saved ``.html`` file) goes through trafilatura, which keeps the article and
drops navigation, footers and ads; plain text is used as it is.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kakehashi.client.errors import ClientError

if TYPE_CHECKING:
    from kakehashi.client.chatbot import Chatbot

Length = Literal["short", "long"]
LENGTHS: dict[str, tuple[str, int]] = {
    "short": ("short summary (a few sentences)", 200),
    "long": ("long and detailed summary", 700),
}
"""How each ``--length`` is asked for, and the most tokens its summaries may take."""
HTML_SUFFIXES = (".html", ".htm", ".xhtml", ".shtml")
FETCH_TIMEOUT = 30.0
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_MISSING_TRAFILATURA = (
    "Reading HTML needs trafilatura, which is not installed: pip install 'kakehashi[summarize]'."
)


@dataclass(frozen=True)
class Document:
    """The main text of a source, with its title when the page has one."""

    source: str
    text: str
    title: str | None = None


def read_source(source: str) -> Document:
    """The document at ``source``: an http(s) URL, a file, or ``-`` (standard input)."""
    if source == "-":
        return _document("-", sys.stdin.read(), html=None)
    if re.match(r"https?://", source, re.IGNORECASE):
        return _fetch(source)
    path = Path(source).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientError(f"Cannot read {source}: {exc.strerror or exc}.", param="source") from None
    text = data.decode("utf-8", errors="replace")
    return _document(source, text, html=path.suffix.lower() in HTML_SUFFIXES or None)


def _fetch(url: str) -> Document:
    import httpx

    headers = {"User-Agent": "kakehashi-summarize (+https://pypi.org/project/kakehashi/)"}
    try:
        response = httpx.get(url, headers=headers, follow_redirects=True, timeout=FETCH_TIMEOUT)
    except httpx.HTTPError as exc:
        raise ClientError(f"Cannot fetch {url}: {exc}.", param="source") from None
    if response.status_code >= 400:
        raise ClientError(
            f"Cannot fetch {url}: HTTP {response.status_code}.",
            status=response.status_code,
            param="source",
        )
    kind = response.headers.get("content-type", "")
    html = "html" in kind or None
    return _document(url, response.text, html=html, url=str(response.url))


def _looks_like_html(text: str) -> bool:
    head = text.lstrip()[:500].lower()
    return head.startswith(("<!doctype html", "<html")) or "<body" in head


def _document(source: str, text: str, *, html: bool | None, url: str | None = None) -> Document:
    """``text`` as a document, its main text extracted if it is HTML (``html=None``: sniff)."""
    if html is None:
        html = _looks_like_html(text)
    if not html:
        return Document(source, text.strip())
    try:
        import trafilatura
    except ImportError:
        raise ClientError(_MISSING_TRAFILATURA) from None
    extracted = trafilatura.bare_extraction(
        text, url=url, include_comments=False, with_metadata=True
    )
    body = getattr(extracted, "text", None) if extracted is not None else None
    if not body:
        raise ClientError(f"Found no main text in the page {source}.", param="source")
    return Document(source, body.strip(), getattr(extracted, "title", None) or None)


# -- splitting by tokens -----------------------------------------------------------------------


def split_by_tokens(text: str, count: Callable[[str], int], limit: int) -> list[str]:
    """``text`` cut into chunks of at most ``limit`` tokens (by ``count``), at paragraph
    boundaries where possible, else at sentences, else inside a sentence."""
    pieces: list[tuple[str, int]] = []
    for paragraph in re.split(r"\n\s*\n|\n", text):
        paragraph = paragraph.strip()
        if paragraph:
            pieces += _fitting(paragraph, count, limit)
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for piece, tokens in pieces:
        if current and used + tokens > limit:
            chunks.append("\n\n".join(current))
            current, used = [], 0
        current.append(piece)
        used += tokens + 1  # the paragraph break
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _fitting(text: str, count: Callable[[str], int], limit: int) -> list[tuple[str, int]]:
    """``text`` as pieces of at most ``limit`` tokens each, with their counts."""
    tokens = count(text)
    if tokens <= limit:
        return [(text, tokens)]
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    if len(sentences) > 1:
        return [piece for sentence in sentences for piece in _fitting(sentence, count, limit)]
    # One sentence longer than a chunk: cut it in proportion, between words where it can.
    size = max(1, len(text) * limit // tokens)
    return [piece for part in _cut(text, size) for piece in _fitting(part, count, limit)]


def _shortened(text: str, count: Callable[[str], int], limit: int) -> str:
    """``text``, cut after about ``limit`` tokens if it is longer."""
    while (tokens := count(text)) > limit:
        text = _cut(text, max(1, len(text) * limit // tokens - 1))[0]
    return text


def _cut(text: str, size: int) -> list[str]:
    """``text`` in parts of at most ``size`` characters, each ending at a space if it has one."""
    parts = []
    while len(text) > size:
        end = text.rfind(" ", 1, size + 1)
        end = end if end > 0 else size
        parts.append(text[:end].strip())
        text = text[end:].lstrip()
    return [p for p in [*parts, text] if p]


# -- map and reduce ----------------------------------------------------------------------------


class Summarizer:
    """Summarizes documents with one model through a :class:`Chatbot` (whose history is
    cleared before each request). ``on_chunks(total)`` and ``on_done()`` report progress."""

    def __init__(
        self,
        bot: Chatbot,
        *,
        length: Length = "short",
        language: str | None = None,
        chunk_tokens: int | None = None,
        on_chunks: Callable[[int], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        if length not in LENGTHS:
            raise ClientError(f"length must be short or long, not {length!r}.", param="length")
        self.bot = bot
        self.length = length
        self.language = language
        self.chunk_tokens = chunk_tokens
        self.on_chunks = on_chunks or (lambda total: None)
        self.on_done = on_done or (lambda: None)
        self.levels = 0  # map rounds the last summary took

    def _instruction(self, final: bool, part: str | None, title: str | None) -> str:
        what, _ = LENGTHS[self.length]
        about = f" of the document “{title}”" if title else ""
        language = f"in {self.language}" if self.language else "in the language of the text"
        if final and part is None:
            return f"Write a {what}{about}, {language}, of what follows."
        if final:
            return (
                f"Below are summaries of consecutive parts{about}. Combine them into one {what}, "
                f"{language}."
            )
        return (
            f"Summarize this part{part or ''}{about}, {language}. Keep names, facts and "
            "numbers; it will be combined with the summaries of the other parts."
        )

    def _sizes(self, window: int | None, title: str | None) -> tuple[int, int]:
        """How long a summary may be, and how many tokens a chunk may have.

        Both come out of what the window leaves after the instructions: a summary takes at
        most a quarter of it, so that each round packs two or more summaries per chunk and the
        rounds converge; a chunk takes nine tenths of the rest (the counts of separate pieces
        only approach the count of their joined text). ``chunk_tokens`` may make chunks
        smaller.
        """
        longest = LENGTHS[self.length][1]
        if window is None:
            if self.chunk_tokens is None:
                raise ClientError(
                    "The server does not say this model's context window: give "
                    "--context-window or --chunk-tokens.",
                    param="context_window",
                )
            return longest, self.chunk_tokens
        overhead = max(
            self.bot.counter.count_messages([{"role": "user", "content": instruction + "\n\n"}])
            for instruction in (
                self._instruction(False, " (part 999 of 999)", title),
                self._instruction(True, "", title),
            )
        )
        room = window - overhead
        reply = min(longest, room // 4)
        chunk = (room - reply) * 9 // 10
        if reply < 16:
            raise ClientError(
                f"The context window of {window} tokens leaves no room to summarize in "
                f"(the instructions alone take {overhead}).",
                param="context_window",
            )
        return reply, min(chunk, self.chunk_tokens or chunk)

    def summarize(self, document: Document) -> Iterator[str]:
        """The summary of ``document``, streamed."""
        if not document.text.strip():
            raise ClientError(f"{document.source} holds no text to summarize.", param="source")
        bot = self.bot
        window = bot.context_window
        bot.max_tokens, budget = self._sizes(window, document.title)
        chunks = split_by_tokens(document.text, bot.counter.count_text, budget)
        self.levels = 0
        while len(chunks) > 1:
            self.levels += 1
            self.on_chunks(len(chunks))
            summaries = []
            for index, chunk in enumerate(chunks, start=1):
                part = f" (part {index} of {len(chunks)})"
                summaries.append(self._ask(self._instruction(False, part, document.title), chunk))
                self.on_done()
            # Two summaries or more to a chunk, so each round at least halves the chunks: a
            # summary that came out longer than half a chunk is cut there.
            half = budget // 2
            summaries = [_shortened(text, bot.counter.count_text, half) for text in summaries]
            chunks = split_by_tokens("\n\n".join(summaries), bot.counter.count_text, budget)
        final = self._instruction(True, None if self.levels == 0 else "", document.title)
        bot.reset()
        yield from bot.stream_chat(f"{final}\n\n{chunks[0]}")

    def _ask(self, instruction: str, text: str) -> str:
        self.bot.reset()
        return self.bot.chat(f"{instruction}\n\n{text}", stream=False).strip()

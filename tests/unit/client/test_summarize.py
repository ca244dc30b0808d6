"""Reading pages and files, splitting by tokens, and the map-reduce of summaries (against a
fake provider that records every request)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kakehashi.client import Chatbot, ClientError
from kakehashi.client.summarize import Document, Summarizer, read_source, split_by_tokens
from support.fake_provider import FakeProviders, run_fake_providers

PAGE = Path(__file__).parents[2] / "data" / "kintai_bridge.html"


def words(text: str) -> int:
    return len(text.split())


def test_a_saved_page_keeps_its_article_only() -> None:
    document = read_source(str(PAGE))
    assert document.title == "The Kintai Bridge: five arches over the Nishiki River"
    assert "Typhoon Kijia" in document.text and "three most unusual bridges" in document.text
    for boilerplate in ("Popular posts", "Subscribe", "Privacy policy", "ramen"):
        assert boilerplate not in document.text


def test_plain_text_and_html_without_a_suffix(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("  Line one.\n\nLine two.  \n")
    assert read_source(str(notes)) == Document(str(notes), "Line one.\n\nLine two.")
    saved = tmp_path / "page"
    saved.write_bytes(PAGE.read_bytes())
    assert read_source(str(saved)).title is not None  # sniffed as HTML


def test_bad_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClientError, match=r"Cannot read .*missing\.html: No such file"):
        read_source(str(tmp_path / "missing.html"))
    with pytest.raises(ClientError, match=r"Cannot fetch http://127\.0\.0\.1:9/"):
        read_source("http://127.0.0.1:9/page.html")
    empty = tmp_path / "empty.html"
    empty.write_text("<html><head><title>t</title></head><body><script>x()</script></body></html>")
    with pytest.raises(ClientError, match="Found no main text"):
        read_source(str(empty))
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # as if the extra were not installed
    with pytest.raises(ClientError, match=r"pip install 'kakehashi\[summarize\]'"):
        read_source(str(PAGE))


def test_split_by_tokens_respects_the_limit_and_keeps_every_word() -> None:
    text = read_source(str(PAGE)).text
    for limit in (5, 12, 40, 100, 10_000):
        chunks = split_by_tokens(text, words, limit)
        assert all(words(chunk) <= limit for chunk in chunks)
        assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    assert len(split_by_tokens(text, words, 10_000)) == 1
    # paragraphs stay whole when they fit
    chunks = split_by_tokens(text, words, 100)
    assert all(chunk.count("\n\n") < 3 for chunk in chunks)
    assert any(p.startswith("The first bridge") for c in chunks for p in c.split("\n\n"))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    with run_fake_providers() as server:
        yield server


def test_map_reduce_against_a_provider(fake: FakeProviders) -> None:
    fake.seen.clear()
    bot = Chatbot("brief", provider="ollama", base_url=fake.base_url("ollama"))
    progress: list[int] = []
    done: list[None] = []
    summarizer = Summarizer(
        bot,
        chunk_tokens=150,
        language="Japanese",
        on_chunks=progress.append,
        on_done=lambda: done.append(None),
    )
    document = read_source(str(PAGE))
    summary = "".join(summarizer.summarize(document))
    chats = fake.chats()
    assert progress[0] > 1 and len(done) == sum(progress) == len(chats) - 1
    maps = [c.body["messages"][-1]["content"] for c in chats[: progress[0]]]  # type: ignore[index]
    assert all("in Japanese" in m and f"of {progress[0]})" in m for m in maps)
    assert "Typhoon Kijia" in "".join(maps)
    final = chats[-1].body
    assert final["stream"] is True  # type: ignore[index]
    assert final["messages"][-1]["content"].startswith("Below are summaries")  # type: ignore[index]
    assert summary.startswith("ollama says: Below are summaries")
    assert all(len(c.body["messages"]) == 1 for c in chats)  # type: ignore[index]


def test_one_chunk_is_summarized_directly(fake: FakeProviders, tmp_path: Path) -> None:
    fake.seen.clear()
    bot = Chatbot("model", provider="ollama", base_url=fake.base_url("ollama"))
    summary = "".join(Summarizer(bot, length="long").summarize(Document("x", "A short text.")))
    assert summary.startswith("ollama says: Write a long and detailed summary")
    assert len(fake.chats()) == 1
    with pytest.raises(ClientError, match="length must be short or long"):
        Summarizer(bot, length="medium")  # type: ignore[arg-type]
    with pytest.raises(ClientError, match="no text to summarize"):
        list(Summarizer(bot).summarize(Document("x", "  ")))
    small = Chatbot("small-window", provider="ollama", base_url=fake.base_url("ollama"))
    with pytest.raises(ClientError, match="does not say this model's context window"):
        list(Summarizer(small).summarize(Document("x", "text")))

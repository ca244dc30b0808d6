"""``Chatbot``: a conversation with any OpenAI-compatible server, on the official SDK.

It keeps the turns, fits them into the model's context window before each request (dropping
the oldest turns, or replacing them with a summary the model writes, and saying so), streams,
tracks usage and logprobs, and saves and loads conversations::

    bot = Chatbot(model="gemini-2.0-flash", system="Be brief.")
    bot.chat("Where is the capital of Japan?")
    bot.chat("And its population?")
    bot.usage.total, bot.save("trip.json")
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import openai

from kakehashi.client.errors import ClientError, ContextWindowExceeded, from_openai
from kakehashi.client.history import Message, turns_of, turns_to_drop
from kakehashi.client.providers import Endpoint, resolve
from kakehashi.client.tokens import TokenCounter

logger = logging.getLogger("kakehashi.client")

Overflow = Literal["drop", "summarize"]
SAVE_FORMAT = "kakehashi.chat/1"
DEFAULT_REPLY_RESERVE = 256
"""Tokens kept free for the reply when ``max_tokens`` is not set (or a quarter of the window)."""
SUMMARY_TOKENS = 128
"""The longest summary of dropped turns (or an eighth of the budget, if less)."""
SUMMARY_MARGIN = 16  # the words that introduce the summary in the system message
SUMMARY_PROMPT = (
    "Summarize the conversation below in a few sentences. Keep names, facts, numbers and "
    "decisions; write it so that the conversation can go on from the summary alone."
)


@dataclass
class Usage:
    """Token counts of one exchange, or of many added up."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass
class ChatUsage:
    """``last``: the usage the server reported for the latest request (``None`` before one,
    or from a server that reports none); ``total``: every request of this ``Chatbot``."""

    last: Usage | None = None
    total: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Trim:
    """What was done to fit the history: ``dropped`` oldest turns went (``summarized`` into
    the system message, or not); ``prompt_tokens`` is what was sent, ``exact`` whether the
    count came from the model's tokenizer."""

    dropped: int
    summarized: bool
    prompt_tokens: int
    context_window: int | None  # None: the server refused a request of unknown window
    exact: bool

    def describe(self) -> str:
        """One line for people."""
        turns = "turn" if self.dropped == 1 else "turns"
        how = "summarized" if self.summarized else "dropped"
        window = f"the {self.context_window}-token" if self.context_window else "the model's"
        return f"{how} the {self.dropped} oldest {turns} to fit {window} context window"


@dataclass(frozen=True)
class TokenProbability:
    """One generated token, its log probability and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


class Chatbot:
    """A conversation that remembers its turns and fits them into the model's context.

    ``model`` picks the provider by name (``gemini-*``, ``grok-*``, ``plamo-*``, ``gpt-*``, or
    a ``provider/`` prefix such as ``ollama/llama3.2``), or ``provider=`` names it; keys come
    from the usual variables or a ``.env`` file. ``model=None`` takes the first model the
    server lists. ``context_window`` overrides what ``/v1/models`` says; ``max_tokens`` caps
    each reply and is kept free in the window (else :data:`DEFAULT_REPLY_RESERVE` tokens are).
    """

    def __init__(
        self,
        model: str | None = None,
        system: str | None = None,
        *,
        provider: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        stream: bool = True,
        max_tokens: int | None = None,
        context_window: int | None = None,
        overflow: Overflow = "drop",
        on_trim: Callable[[Trim], None] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        if overflow not in ("drop", "summarize"):
            raise ClientError(
                f"overflow must be 'drop' or 'summarize', not {overflow!r}.", param="overflow"
            )
        self.endpoint: Endpoint = resolve(
            model, provider=provider, base_url=base_url, api_key=api_key, env=env
        )
        self._sdk = openai.OpenAI(
            base_url=self.endpoint.base_url,
            api_key=self.endpoint.api_key,
            timeout=timeout,
            max_retries=max_retries,
        )
        self._model = self.endpoint.model
        self.system = system
        self.temperature = temperature
        self.stream = stream
        self.max_tokens = max_tokens
        self.overflow: Overflow = overflow
        self.on_trim = on_trim
        self.summary: str | None = None
        self.usage = ChatUsage()
        self.last_trim: Trim | None = None
        self.last_logprobs: list[TokenProbability] = []
        self._turns: list[Message] = []
        self._configured_window = context_window
        self._window: int | None = context_window
        self._window_known = context_window is not None
        self._counter: TokenCounter | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model id sent (the server's first listed model if none was given)."""
        if self._model is None:
            try:
                listed = [m.id for m in self._sdk.models.list()]
            except openai.OpenAIError as exc:
                raise from_openai(exc) from None
            if not listed:
                raise ClientError(f"The server at {self.endpoint.base_url} lists no models.")
            self._model = listed[0]
        return self._model

    @model.setter
    def model(self, value: str) -> None:
        self._model = value
        self._counter = None
        self._window = self._configured_window
        self._window_known = self._configured_window is not None

    @property
    def messages(self) -> list[Message]:
        """What the next request sends before the new prompt: the system message (with the
        summary of dropped turns, if any) and the kept turns."""
        return self._head(self.summary) + [dict(m) for m in self._turns]

    def _head(self, summary: str | None) -> list[Message]:
        system = self.system or ""
        if summary:
            system = f"{system}\n\nSummary of the earlier conversation: {summary}".strip()
        return [{"role": "system", "content": system}] if system else []

    @property
    def context_window(self) -> int | None:
        """The model's context window: configured, else from its ``/v1/models`` card."""
        if not self._window_known:
            self._window = self.counter.context_window()
            self._window_known = True
        return self._window

    @property
    def counter(self) -> TokenCounter:
        """The token counter of this model on this server."""
        if self._counter is None:
            self._counter = TokenCounter(self._sdk, self.model)
        return self._counter

    def reset(self) -> None:
        """Forget the turns and the summary (the system message and the usage stay)."""
        self._turns = []
        self.summary = None
        self.last_trim = None
        self.last_logprobs = []

    def add_turn(self, prompt: str, answer: str) -> None:
        """Append an exchange that happened elsewhere (a log, another client) to the history."""
        self._turns += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]

    def save(self, path: str | Path) -> None:
        """Write the conversation to ``path`` as JSON."""
        state = {
            "format": SAVE_FORMAT,
            "provider": self.endpoint.provider.name,
            "model": self._model,
            "system": self.system,
            "summary": self.summary,
            "messages": self._turns,
            "usage": asdict(self.usage),
        }
        Path(path).write_text(json.dumps(state, ensure_ascii=False, indent=2) + "\n", "utf-8")

    def load(self, path: str | Path) -> Chatbot:
        """Continue the conversation saved at ``path`` (its model too, if it was saved for the
        same provider)."""
        try:
            state = json.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise ClientError(f"Cannot read {path}: {exc.strerror or exc}.") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ClientError(f"{path} is not a saved conversation (not JSON).") from None
        if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
            raise ClientError(f"{path} is not a saved conversation ({SAVE_FORMAT}).")
        messages = state.get("messages")
        if not isinstance(messages, list) or not all(_is_turn(m) for m in messages):
            raise ClientError(f"{path} is not a saved conversation: bad 'messages'.")
        self._turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        self.system = state.get("system")
        self.summary = state.get("summary")
        usage = state.get("usage") or {}
        self.usage = ChatUsage(
            last=Usage(**usage["last"]) if usage.get("last") else None,
            total=Usage(**usage.get("total", {})),
        )
        if state.get("model") and state.get("provider") == self.endpoint.provider.name:
            self.model = state["model"]
        return self

    # -- talking -----------------------------------------------------------------------------

    def chat(
        self,
        prompt: str,
        *,
        stream: bool | None = None,
        on_text: Callable[[str], None] | None = None,
        logprobs: int | None = None,
        **options: Any,
    ) -> str:
        """Send ``prompt`` with the history and return the answer (kept in the history).

        ``on_text`` receives each piece of a streamed answer as it arrives. ``logprobs=N``
        asks for each token's probability and ``N`` alternatives (:attr:`last_logprobs`).
        Other ``options`` go to ``chat.completions.create`` as they are.
        """
        pieces = self.stream_chat(prompt, logprobs=logprobs, stream=stream, **options)
        answer = []
        for piece in pieces:
            answer.append(piece)
            if on_text is not None:
                on_text(piece)
        return "".join(answer)

    def stream_chat(
        self,
        prompt: str,
        *,
        logprobs: int | None = None,
        stream: bool | None = None,
        **options: Any,
    ) -> Generator[str, None, None]:
        """Like :meth:`chat`, yielding the answer in pieces (one piece when not streaming).
        The turn is kept once the answer is complete."""
        prompt = prompt.strip()
        if not prompt:
            raise ClientError("The prompt is empty.", param="prompt")
        stream = self.stream if stream is None else stream
        self._turns.append({"role": "user", "content": prompt})
        done = False
        try:
            answer = yield from self._exchange(stream, logprobs, options)
            done = True
        finally:
            if not done:
                self._turns.pop()
        self._turns.append({"role": "assistant", "content": answer})

    def _exchange(
        self, stream: bool, logprobs: int | None, options: dict[str, Any]
    ) -> Generator[str, None, str]:
        """One request (retried with fewer turns when a server of unknown window refuses)."""
        while True:
            self._fit()
            request: dict[str, Any] = {"model": self.model, "messages": self.messages, **options}
            if self.temperature is not None:
                request.setdefault("temperature", self.temperature)
            if self.max_tokens is not None:
                request.setdefault("max_tokens", self.max_tokens)
            if logprobs:
                request.update(logprobs=True, top_logprobs=logprobs)
            try:
                if stream:
                    return (yield from self._streamed(request))
                return (yield from self._whole(request))
            except ContextWindowExceeded:
                if self.context_window is not None or len(turns_of(self._turns)) < 2:
                    raise
                self._drop(1, budget=None, window=None)

    def _whole(self, request: dict[str, Any]) -> Generator[str, None, str]:
        try:
            response = self._sdk.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise from_openai(exc) from None
        if not response.choices:
            raise ClientError("The server answered with no choices.")
        choice = response.choices[0]
        self._record_usage(response.usage)
        self.last_logprobs = _logprobs(choice.logprobs)
        text = choice.message.content or ""
        yield text
        return text

    def _streamed(self, request: dict[str, Any]) -> Generator[str, None, str]:
        request = {**request, "stream": True, "stream_options": {"include_usage": True}}
        self.last_logprobs = []
        pieces: list[str] = []
        usage = None
        try:
            with self._sdk.chat.completions.create(**request) as chunks:
                for chunk in chunks:
                    usage = chunk.usage or usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    self.last_logprobs += _logprobs(choice.logprobs)
                    text = choice.delta.content if choice.delta else None
                    if text:
                        pieces.append(text)
                        yield text
        except openai.OpenAIError as exc:
            raise from_openai(exc) from None
        self._record_usage(usage)
        return "".join(pieces)

    def _record_usage(self, usage: Any) -> None:
        if usage is None:
            self.usage.last = None
            return
        last = Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        self.usage.last = last
        self.usage.total = self.usage.total + last

    # -- fitting the context window -------------------------------------------------------------

    def _count(self, messages: list[Message]) -> int:
        return self.counter.count_messages(messages)

    def _fit(self) -> None:
        """Drop (or summarize) the oldest turns until the history and a reply fit the window.

        When summarizing, the turns are fitted to the budget less :data:`SUMMARY_TOKENS` (and
        a margin for the words that introduce it), which the new summary may then fill.
        """
        window = self.context_window
        if window is None:
            return
        reserve = self.max_tokens or min(DEFAULT_REPLY_RESERVE, window // 4)
        budget = window - reserve
        if self._count(self.messages) <= budget:
            return
        turns = turns_of(self._turns)
        older = len(turns) - 1  # the last turn holds the new prompt and always stays
        summarize = self.overflow == "summarize"
        head = self._head(None) if summarize else self._head(self.summary)
        room = budget - (_summary_room(budget) if summarize else 0)

        def measure(k: int) -> int:
            kept = [m for turn in turns[k:] for m in turn]
            return self._count(head + kept)

        dropped = turns_to_drop(measure, older, room)
        if summarize and dropped == 0 and older:  # only the old summary overflows: refold it
            dropped = 1
        if summarize and dropped is None:  # no room for a summary: drop as without one
            dropped = turns_to_drop(measure, older, budget)
        if not dropped:
            raise ContextWindowExceeded(
                f"The prompt does not fit the model's context window of {window} tokens with "
                f"{reserve} left for the reply, even without earlier turns.",
                param="messages",
                code="context_length_exceeded",
            )
        self._drop(dropped, budget=budget, window=window)

    def _drop(self, dropped: int, *, budget: int | None, window: int | None) -> None:
        turns = turns_of(self._turns)
        gone = [m for turn in turns[:dropped] for m in turn]
        self._turns = [m for turn in turns[dropped:] for m in turn]
        summarized = self.overflow == "summarize" and self._summarize(gone, budget, window)
        trim = Trim(
            dropped=dropped,
            summarized=summarized,
            prompt_tokens=self._count(self.messages),
            context_window=window,
            exact=bool(self.counter.exact),
        )
        self.last_trim = trim
        if self.on_trim is not None:
            self.on_trim(trim)
        else:
            logger.warning("kakehashi.client.Chatbot %s", trim.describe())

    def _summarize(self, gone: list[Message], budget: int | None, window: int | None) -> bool:
        """Fold ``gone`` (and the previous summary) into :attr:`summary`. False when the
        summary cannot be written or would not fit: then the turns are simply dropped, and
        the previous summary kept only if it still fits."""
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in gone)
        previous, self.summary = self.summary, None
        if previous:
            transcript = f"(earlier) {previous}\n{transcript}"
        request = [
            {"role": "system", "content": SUMMARY_PROMPT},
            {"role": "user", "content": transcript},
        ]
        room = _summary_room(budget) if budget is not None else SUMMARY_TOKENS
        if window is None or self._count(request) + room <= window:
            try:
                response = self._sdk.chat.completions.create(
                    model=self.model,
                    messages=request,  # type: ignore[arg-type]
                    temperature=0,
                    max_tokens=room - SUMMARY_MARGIN,
                )
            except openai.OpenAIError as exc:
                raise from_openai(exc) from None
            self._record_usage(response.usage)
            choice = response.choices[0] if response.choices else None
            self.summary = (choice.message.content or "").strip() if choice else None
        if self.summary and (budget is None or self._count(self.messages) <= budget):
            return True
        self.summary = previous
        if budget is not None and self._count(self.messages) > budget:
            self.summary = None
        return False


def _summary_room(budget: int) -> int:
    return min(SUMMARY_TOKENS, budget // 8) + SUMMARY_MARGIN


def _is_turn(message: object) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") in ("user", "assistant")
        and isinstance(message.get("content"), str)
    )


def _logprobs(logprobs: Any) -> list[TokenProbability]:
    if logprobs is None or not logprobs.content:
        return []
    return [
        TokenProbability(
            token=item.token,
            logprob=item.logprob,
            top=[(alt.token, alt.logprob) for alt in item.top_logprobs or []],
        )
        for item in logprobs.content
    ]

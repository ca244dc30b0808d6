"""A deterministic backend for tests that need no weights.

:class:`FakeBackend` is the real :class:`LocalBackend` adapter driving a fake engine: the
tokenizer is byte-level (one token per UTF-8 byte), the chat template writes ``role: content``
lines, and the "model" echoes the prompt's tokens back, then stops with an end-of-text token.
Logprobs are fixed: the chosen token has probability 1/2, the next alternatives 1/4, 1/8, ...
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, ClassVar

from kakehashi.backends.local import LoadedModel, LocalBackend
from kakehashi.engine.params import FinishReason, GenerationChunk, SamplingParams, TokenLogprob
from kakehashi.engine.tokenizer import IncrementalDetokenizer
from kakehashi.errors import ServerError

FAKE_MODEL_ID = "fake-model"


class FakeTokenizer:
    """One token per byte, plus an end-of-text (256) and a begin-of-text (257) token."""

    EOS = 256
    BOS = 257
    _SPECIAL_TEXT: ClassVar[dict[int, bytes]] = {EOS: b"<|endoftext|>", BOS: b"<|begin|>"}

    vocab_size: int = 258
    eos_token_ids: tuple[int, ...] = (EOS,)
    max_token_bytes = len(_SPECIAL_TEXT[EOS])

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """The UTF-8 bytes of ``text`` (after a begin token if asked for special tokens)."""
        return ([self.BOS] if add_special_tokens else []) + list(text.encode())

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of ``ids``."""
        kept = [i for i in ids if not (skip_special_tokens and self.is_special(i))]
        return b"".join(self.token_bytes(i) for i in kept).decode(errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The byte (or special token text) of ``token_id``."""
        return bytes([token_id]) if token_id < 256 else self._SPECIAL_TEXT.get(token_id, b"")

    def token_text(self, token_id: int) -> str:
        """The token as text, or ``bytes:\\x..`` for a lone non-ASCII byte."""
        raw = self.token_bytes(token_id)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is one of the two special tokens."""
        return token_id >= 256


class FakeChatTemplate:
    """``role: content`` lines, then ``assistant:`` when a reply is wanted."""

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list | None = None,
    ) -> str:
        """The conversation as plain text."""
        lines = [f"{m['role']}: {m.get('content') or ''}\n" for m in messages]
        return "".join(lines) + ("assistant:" if add_generation_prompt else "")


def _logprob(token: int, top: int) -> TokenLogprob:
    alternatives = [token, *((token + k) % 256 for k in range(1, top))]
    return TokenLogprob(
        token_id=token,
        logprob=math.log(0.5),
        top=tuple((t, math.log(0.5 ** (rank + 1))) for rank, t in enumerate(alternatives[:top])),
    )


class FakeEngine:
    """Echoes the prompt's tokens, one per step, then emits end-of-text.

    ``delay`` seconds pass before each token; with ``fail_after`` the engine raises a
    :class:`ServerError` after that many tokens (to test errors in mid-stream).
    """

    def __init__(
        self, *, max_model_len: int = 1024, delay: float = 0.0, fail_after: int | None = None
    ) -> None:
        self.tokenizer = FakeTokenizer()
        self.max_model_len = max_model_len
        self.delay = delay
        self.fail_after = fail_after
        self.started = False
        self.running: set[str] = set()
        self.aborted: list[str] = []

    def start(self) -> None:
        """Nothing to start."""
        self.started = True

    async def shutdown(self) -> None:
        """Nothing to stop."""
        self.started = False

    def check_admission(self, count: int = 1) -> None:
        """The fake has no queue: every request is admitted."""

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: Iterable[int],
        params: SamplingParams,
        *,
        priority: int = 0,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the echo (in arrival order, whatever the ``priority``); leaving early records
        ``request_id`` in :attr:`aborted`."""
        prompt = list(prompt_token_ids)
        if not prompt:
            raise ValueError("the prompt must contain at least one token")
        detokenizer = IncrementalDetokenizer(self.tokenizer, params.stop)  # type: ignore[arg-type]
        outputs = [t for t in prompt if not self.tokenizer.is_special(t)] + [FakeTokenizer.EOS]
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = (None, *(_logprob(t, params.prompt_logprobs) for t in prompt[1:]))
        finished = False
        self.running.add(request_id)
        try:
            if params.max_tokens == 0:  # only score the prompt, as the real engine does
                finished = True
                yield GenerationChunk(
                    request_id=request_id,
                    token_ids=(),
                    text="",
                    finished=True,
                    finish_reason=FinishReason.LENGTH,
                    prompt_tokens=len(prompt),
                    completion_tokens=0,
                    prompt_logprobs=prompt_logprobs,
                )
                return
            for step, token in enumerate(outputs, start=1):
                await asyncio.sleep(self.delay)
                if self.fail_after is not None and step > self.fail_after:
                    raise ServerError("the fake engine failed")
                reason = None
                if token == FakeTokenizer.EOS or detokenizer.add(token):
                    reason = FinishReason.STOP
                elif step >= params.max_tokens or len(prompt) + step >= self.max_model_len:
                    reason = FinishReason.LENGTH
                finished = reason is not None
                text = detokenizer.take_text() + (detokenizer.finish() if finished else "")
                yield GenerationChunk(
                    request_id=request_id,
                    token_ids=(token,),
                    text=text,
                    finished=finished,
                    finish_reason=reason,
                    prompt_tokens=len(prompt),
                    completion_tokens=step,
                    logprobs=None
                    if params.logprobs is None
                    else (_logprob(token, params.logprobs),),
                    prompt_logprobs=prompt_logprobs if step == 1 else None,
                )
                if finished:
                    return
        finally:
            self.running.discard(request_id)
            if not finished:
                self.aborted.append(request_id)


class FakeBackend(LocalBackend):
    """:class:`LocalBackend` on a :class:`FakeEngine`: the whole adapter, no weights."""

    def __init__(
        self,
        model_ids: Sequence[str] = (FAKE_MODEL_ID,),
        *,
        max_model_len: int = 1024,
        delay: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        self.engine = FakeEngine(max_model_len=max_model_len, delay=delay, fail_after=fail_after)
        model = LoadedModel(self.engine, FakeChatTemplate(), "fp_fake")
        super().__init__(lambda: model, model_ids=model_ids, owned_by="kakehashi-test")

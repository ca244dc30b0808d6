"""From a request to what the engine runs: prompt token ids, the completion budget that fits
the context window, and :class:`SamplingParams`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kakehashi.backends.model import TemplateLike, TokenizerLike
from kakehashi.engine.params import SamplingParams
from kakehashi.errors import ContextLengthExceededError, InvalidRequestError
from kakehashi.wire.chat import ChatCompletionRequest, ChatMessage
from kakehashi.wire.completions import CompletionRequest


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt as the engine sees it, and as ``echo`` returns it.

    ``added`` counts the tokens the tokenizer put before and after the text's own (a BOS):
    the model reads them, but they spell nothing of ``text``, so ``echo`` leaves them out.
    """

    ids: list[int]
    text: str
    added: tuple[int, int] = (0, 0)

    @property
    def text_ids(self) -> list[int]:
        """The tokens that spell ``text``."""
        before, after = self.added
        return self.ids[before : len(self.ids) - after]


NORMALIZER_SHRINK = 4
"""How much a tokenizer's normalizer may shorten text (NFC composes up to three code points
into one), with room to spare."""


def check_prompt_chars(chars: int, tokenizer: TokenizerLike, window: int, param: str) -> None:
    """Refuse, before any tokenizing, a prompt of ``chars`` characters that cannot fit the
    ``window`` whatever its text: no token stands for more than ``max_token_bytes`` bytes."""
    limit = window * tokenizer.max_token_bytes * NORMALIZER_SHRINK
    if chars > limit:
        noun = "messages" if param == "messages" else "prompt"
        raise ContextLengthExceededError(
            f"This model's maximum context length is {window} tokens. However, your {noun} "
            f"has {chars} characters, more than {window} tokens can hold. Please reduce the "
            f"length of the {noun}.",
            param=param,
        )


def chat_prompt(
    request: ChatCompletionRequest, template: TemplateLike, tokenizer: TokenizerLike
) -> Prompt:
    """The request's messages (and tools) rendered with the model's template, tokenized."""
    return messages_prompt(request.messages, template, tokenizer, tools=request.tools)


def messages_prompt(
    messages: Sequence[ChatMessage],
    template: TemplateLike,
    tokenizer: TokenizerLike,
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> Prompt:
    """A conversation rendered with the model's template and tokenized (the template writes
    the special tokens)."""
    dicts = [m.template_dict() for m in messages]
    text = template.render(dicts, add_generation_prompt=add_generation_prompt, tools=tools)
    return Prompt(tokenizer.encode(text), text)


def check_token_ids(ids: Sequence[int], tokenizer: TokenizerLike, param: str) -> None:
    """Raise 400 naming ``param`` if an id is outside the model's vocabulary."""
    bad = [t for t in ids if t >= tokenizer.vocab_size]
    if bad:
        raise InvalidRequestError(
            f"Invalid token id {bad[0]} in '{param}': this model's vocabulary has "
            f"{tokenizer.vocab_size} tokens.",
            param=param,
        )


def legacy_prompt(prompt: str | list[int], tokenizer: TokenizerLike) -> Prompt:
    """One prompt of a legacy completion: text to tokenize, or token ids to check."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        if not ids:  # like OpenAI's default prompt, start from the end-of-text token
            return Prompt([tokenizer.eos_token_ids[-1]], prompt, added=(1, 0))
        return Prompt(ids, prompt, _added_around(ids, tokenizer.encode(prompt)))
    check_token_ids(prompt, tokenizer, "prompt")
    return Prompt(list(prompt), tokenizer.decode(prompt))


def _added_around(ids: list[int], text_ids: list[int]) -> tuple[int, int]:
    """How many of ``ids`` come before and after ``text_ids``, the same text encoded without
    the tokenizer's additions (BOS, EOS)."""
    extra = len(ids) - len(text_ids)
    for before in range(extra + 1):
        if ids[before : before + len(text_ids)] == text_ids:
            return before, extra - before
    return 0, 0  # the additions changed how the text splits: keep every token


def check_legacy_options(request: CompletionRequest) -> None:
    """Refuse the legacy options this server does not implement."""
    if request.suffix:
        raise InvalidRequestError("This model does not support `suffix`.", param="suffix")
    if request.best_of is not None and request.best_of > (request.n or 1):
        raise InvalidRequestError(
            "`best_of` greater than `n` is not supported by this server.", param="best_of"
        )


def completion_budget(prompt_tokens: int, limit: int | None, window: int, param: str) -> int:
    """The completion length to ask for: ``limit``, else the rest of the ``window``. Raises
    :class:`ContextLengthExceededError` (naming ``param``) when they do not fit."""
    noun = "messages" if param == "messages" else "prompt"
    if limit is None:
        if prompt_tokens >= window:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {window} tokens. However, your "
                f"{noun} resulted in {prompt_tokens} tokens. Please reduce the length of "
                f"the {noun}.",
                param=param,
            )
        return window - prompt_tokens
    if prompt_tokens + limit > window:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {window} tokens. However, you "
            f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the {noun}, "
            f"{limit} in the completion). Please reduce the length of the {noun} or "
            "completion.",
            param=param,
        )
    return limit


def sampling_params(
    request: ChatCompletionRequest | CompletionRequest,
    *,
    vocab_size: int,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The request's sampling options, with OpenAI's defaults filled in; ``logit_bias`` keys
    must be token ids of the vocabulary."""
    bias: dict[int, float] = {}
    for key, value in (request.logit_bias or {}).items():
        token = int(key)
        if token >= vocab_size:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': token id {token} is out of range; this "
                f"model's vocabulary has {vocab_size} tokens.",
                param="logit_bias",
            )
        bias[token] = value
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=bias,
        stop=tuple(s for s in request.stop or () if s),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )

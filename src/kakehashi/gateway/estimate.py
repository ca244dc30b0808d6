"""Token estimates made before a request runs, for the rate limiter's up-front charge.

The gateway has no tokenizer for most models, so it estimates as OpenAI does for its limits:
from the character count (about four characters a token), plus the completion the request may
produce. The limiter refunds the difference once the real usage is known.
"""

from __future__ import annotations

import json
from typing import Any

from kakehashi.wire.chat import ChatCompletionRequest
from kakehashi.wire.completions import CompletionRequest
from kakehashi.wire.embeddings import EmbeddingRequest

CHARS_PER_TOKEN = 4
DEFAULT_COMPLETION_ESTIMATE = 256
"""Tokens charged up front for a chat completion that sets no limit."""


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _text_tokens(content)
    return _text_tokens(json.dumps(content))


def prompt_estimate(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> int:
    """Tokens the prompt (or the inputs) will take, estimated."""
    if isinstance(request, ChatCompletionRequest):
        return sum(4 + _content_tokens(m.content) for m in request.messages) + 3
    items = request.prompt if isinstance(request, CompletionRequest) else request.input
    return sum(len(item) if isinstance(item, list) else _text_tokens(item) for item in items)


def completion_estimate(request: ChatCompletionRequest | CompletionRequest) -> int:
    """The most tokens the completion may produce: its limit times the choices."""
    limit = request.completion_limit
    if limit is None:
        limit = DEFAULT_COMPLETION_ESTIMATE
    prompts = len(request.prompt) if isinstance(request, CompletionRequest) else 1
    return limit * (request.n or 1) * prompts

"""Token counts for one catalog entry: exact where the backend holds the tokenizer, an estimate
(:mod:`kakehashi.token_estimate`) where it cannot tokenize (an upstream provider)."""

from __future__ import annotations

from dataclasses import dataclass

from kakehashi.backends.base import TokenizingBackend
from kakehashi.errors import InvalidRequestError
from kakehashi.gateway.catalog import CatalogEntry
from kakehashi.token_estimate import estimate_messages, estimate_text
from kakehashi.wire.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


def estimate_tokens(request: TokenizeRequest) -> int:
    """An upper-leaning estimate of the request's token count."""
    if request.messages is None:
        return estimate_text(request.prompt or "")
    return estimate_messages(
        (m.text or "" for m in request.messages),
        add_generation_prompt=request.add_generation_prompt,
    )


def context_window(entry: CatalogEntry) -> int | None:
    """The entry's context window: configured on the entry, else the backend's once loaded."""
    if entry.context_window is not None:
        return entry.context_window
    if isinstance(entry.backend, TokenizingBackend):
        return entry.backend.context_window
    return None


@dataclass(frozen=True, slots=True)
class ModelTokens:
    """Tokenizing and detokenizing for one resolved catalog entry."""

    entry: CatalogEntry

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """The request's tokens, or an estimate of their count (``exact`` says which)."""
        window = context_window(self.entry)
        backend = self.entry.backend
        if isinstance(backend, TokenizingBackend):
            ids = backend.tokenize(request)
            return TokenizeResponse(count=len(ids), max_model_len=window, tokens=ids, exact=True)
        return TokenizeResponse(
            count=estimate_tokens(request), max_model_len=window, tokens=None, exact=False
        )

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        """The text of the request's tokens; 400 where the backend has no tokenizer."""
        backend = self.entry.backend
        if not isinstance(backend, TokenizingBackend):
            raise InvalidRequestError(
                f"The model `{self.entry.id}` is served by an upstream whose tokenizer this "
                "server does not have, so it cannot detokenize.",
                param="model",
                code="detokenize_not_supported",
            )
        return DetokenizeResponse(prompt=backend.detokenize(request.tokens))

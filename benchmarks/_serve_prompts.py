"""Request texts of the serve benchmark, sized in the served model's own tokens.

The models have random weights, so what they generate is noise, much of it ids past the end of
the (smaller) tokenizer that spell no text and would never reach an SSE stream. Every request
therefore pins its output with ``logit_bias`` to one ordinary token: each decode step then
streams exactly one chunk, lengths are fixed (the token is not an end-of-sequence token), and
the work per step is the same as for any other token.

A chat sends each reply back as the assistant message of its next turn, and the server
tokenizes it again. A real model's reply comes back as the ids it generated, so only the new
message is prefilled. The pinned reply must do the same: its text has no surrounding space
(the Llama 3 template trims every message, so the reply " a a a" of an earlier version came
back as "a a a", different ids from its first token on, and every turn prefilled the previous
reply again), and the token repeated encodes back to itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kakehashi.engine.chat_template import ChatTemplate
from kakehashi.engine.tokenizer import Tokenizer

FORCED_WORD = "."  # the text of the pinned output token
LOGIT_BIAS = 100.0  # the largest bias the API accepts; beats any logit of these models


@dataclass(frozen=True, slots=True)
class PromptMaker:
    """Random texts of a given token length, and the server's view of a chat, for one model."""

    tokenizer: Tokenizer
    template: ChatTemplate
    words: tuple[str, ...]

    @classmethod
    def for_model(cls, model_dir: Path) -> PromptMaker:
        tokenizer = Tokenizer.from_dir(model_dir)
        words = []
        for token_id in range(tokenizer.vocab_size):
            if tokenizer.is_special(token_id):
                continue
            word = tokenizer.decode([token_id]).strip()
            if word.isascii() and word.isalpha():
                words.append(word)
        return cls(tokenizer, ChatTemplate.from_dir(model_dir), tuple(words))

    def forced_token(self) -> int:
        """The id every benchmark request is pinned to (see the module docstring)."""
        ids = self.tokenizer.encode(FORCED_WORD)
        if len(ids) != 1 or ids[0] in self.tokenizer.eos_token_ids:
            raise ValueError(f"{FORCED_WORD!r} is not one ordinary token of this tokenizer")
        reply = [ids[0]] * 8
        if self.tokenizer.encode(self.tokenizer.decode(reply)) != reply:
            raise ValueError(f"a reply of {FORCED_WORD!r} does not encode back to its ids")
        return ids[0]

    def logit_bias(self) -> dict[str, float]:
        return {str(self.forced_token()): LOGIT_BIAS}

    def text(self, rng: random.Random, tokens: int) -> str:
        """Random words that encode to ``tokens`` tokens (give or take one at the cut)."""
        words = " ".join(rng.choice(self.words) for _ in range(2 * tokens))
        ids = self.tokenizer.encode(words)
        return self.tokenizer.decode(ids[:tokens]).strip()

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The token ids the server builds for ``messages`` (template, then encode)."""
        return self.tokenizer.encode(self.template.render(messages, add_generation_prompt=True))

    def user_text_for_prompt(self, rng: random.Random, prompt_tokens: int) -> str:
        """A user message whose whole chat prompt (template included) is ``prompt_tokens``."""
        overhead = len(self.prompt_ids([{"role": "user", "content": ""}]))
        return self.text(rng, max(prompt_tokens - overhead, 1))

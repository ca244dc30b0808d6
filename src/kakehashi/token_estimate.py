"""A token count without a tokenizer: what the gateway answers for an upstream model and the
client kit falls back to where a server has no ``/tokenize``.

It leans high on purpose, one token per three UTF-8 bytes plus a few per message: English runs
near four bytes a token and CJK text near three, so a conversation trimmed to an estimated
budget overshoots the real window rarely and by little.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4  # role, separators and end-of-message markers of a chat template
TOKENS_PER_REPLY = 3  # the assistant header a generation prompt adds


def estimate_text(text: str) -> int:
    """The estimated token count of ``text``."""
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def estimate_messages(contents: Iterable[str], *, add_generation_prompt: bool = True) -> int:
    """The estimated token count of a conversation whose messages have ``contents``."""
    count = sum(TOKENS_PER_MESSAGE + estimate_text(text) for text in contents)
    return count + (TOKENS_PER_REPLY if add_generation_prompt else 0)

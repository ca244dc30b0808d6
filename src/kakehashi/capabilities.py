"""What a model can be asked to do: one enum, shared by the settings, the backends and the
gateway."""

from __future__ import annotations

import enum


class Capability(enum.StrEnum):
    """An OpenAI endpoint family a model answers (edits are answered by a chat model)."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    EDITS = "edits"


GENERATIVE = frozenset({Capability.CHAT, Capability.COMPLETIONS, Capability.EDITS})
"""What a language model can do."""
EMBEDDING = frozenset({Capability.EMBEDDINGS})
"""What an embedding model can do."""
EVERYTHING = GENERATIVE | EMBEDDING
"""What an upstream model may do, until configuration says otherwise."""

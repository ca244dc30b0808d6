"""OpenAI itself: the reference, so no quirks; its own URL and key variable."""

from __future__ import annotations

from kakehashi.backends.presets.base import Preset


class OpenAI(Preset):
    """api.openai.com."""

    name = "openai"
    label = "OpenAI"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"

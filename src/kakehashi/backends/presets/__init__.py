"""Provider presets: each a small plugin that knows one provider's quirks (the parameters it
refuses, the shape of its errors, its URL and key variable). :func:`preset` finds one by the
name ``[[upstreams]]`` gives as ``provider``."""

from __future__ import annotations

from kakehashi.backends.presets.base import Preset, Problem, Refusal, normalize, read_problem
from kakehashi.backends.presets.gemini import Gemini
from kakehashi.backends.presets.llama_server import LlamaServer
from kakehashi.backends.presets.lmstudio import LMStudio
from kakehashi.backends.presets.ollama import Ollama
from kakehashi.backends.presets.openai import OpenAI
from kakehashi.backends.presets.plamo import PLaMo
from kakehashi.backends.presets.vllm import VLLM
from kakehashi.backends.presets.xai import XAI

__all__ = ["PRESETS", "Preset", "Problem", "Refusal", "normalize", "preset", "read_problem"]

PRESETS: dict[str, type[Preset]] = {
    p.name: p for p in (Preset, OpenAI, Gemini, XAI, PLaMo, LMStudio, LlamaServer, Ollama, VLLM)
}


def preset(provider: str) -> Preset:
    """The preset of ``provider`` (``openai-compatible``: no quirks)."""
    return PRESETS[provider]()

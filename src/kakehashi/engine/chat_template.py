"""A model's Jinja chat template, rendered the way Hugging Face ``transformers`` renders it.

Same environment (sandboxed, ``trim_blocks``, ``lstrip_blocks``, loop controls), same helpers
(``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text), same
variables (``messages``, ``tools``, ``add_generation_prompt`` and the special tokens).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kakehashi.errors import InvalidRequestError

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatTemplateError(InvalidRequestError, ValueError):
    """The template is missing or broken, or it rejected the conversation."""


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        self.source = source
        self._special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc

    @classmethod
    def from_dir(cls, path: Path | str) -> ChatTemplate:
        """Load from ``chat_template.jinja`` if present, else ``tokenizer_config.json``."""
        path = Path(path)
        config_path = path / "tokenizer_config.json"
        config: dict[str, Any] = (
            json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        )
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        else:
            source = _pick_template(config.get("chat_template"), path)
        return cls(source, _special_tokens(config))

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list | None = None,
    ) -> str:
        """The prompt text for ``messages`` (content may be a string or a list of text parts)."""
        try:
            return self._template.render(
                messages=[_flatten_content(m) for m in messages],
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                **self._special_tokens,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed: {exc}") from exc


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Unlike jinja2's own tojson, no HTML escaping and non-ASCII text kept as is.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _pick_template(value: Any, path: Path) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value}
        if named.get("default"):
            return named["default"]
        raise ChatTemplateError(
            f"the model in {path} has named chat templates {sorted(map(str, named))} "
            "but none called 'default'"
        )
    raise ChatTemplateError(
        f"the model in {path} has no chat template (tokenizer_config.json 'chat_template' or "
        "chat_template.jinja); use the completions API with a raw prompt instead"
    )


def _special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    tokens = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def _flatten_content(message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` whose list-of-parts content is joined into one string."""
    flat = dict(message)
    content = flat.get("content")
    if isinstance(content, list):
        flat["content"] = "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return flat

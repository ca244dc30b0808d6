"""The built-in catalog, as data: OpenAI's published migration table of 2024-01-04, and the
OpenAI model names code asks for today.

``data/openai_2024_01_04.toml`` lists every retired model with its endpoint, published price and
recommended replacement. :func:`builtin_specs` turns it into catalog entries served by whatever
local model has the capability, so old code keeps working until the shutdown day and gets a
404 naming the replacement afterwards. The two edit models are the exception: kakehashi keeps
``/v1/edits`` alive for old code, so they stay served (deprecated, never shut down).

``data/openai_model_names.toml`` lists current chat model names (``gpt-3.5-turbo``, ``gpt-4``,
``gpt-4o``, ...): :func:`openai_name_specs` answers each with the served chat model, so that
tutorial code runs unchanged but for its base URL.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from importlib import resources
from typing import Any

from kakehashi.capabilities import Capability
from kakehashi.retirements import MIGRATION_TABLE, TABLES, Endpoint, Migration, migration_table
from kakehashi.settings import ModelSpec

OPENAI_NAMES = "openai_model_names.toml"

__all__ = [
    "MIGRATION_TABLE",
    "Endpoint",
    "Migration",
    "builtin_specs",
    "migration_table",
    "openai_name_specs",
]


def _data(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files(__package__).joinpath("data", name).read_text("utf-8"))


def _spec(row: Migration) -> ModelSpec:
    price = None if row.price_per_1k is None else round(row.price_per_1k * 1000, 6)
    kept = row.endpoint == "edits"
    return ModelSpec(
        id=row.model,
        owned_by="openai",
        capabilities=(Capability(row.endpoint),),
        input_price=price,
        output_price=price if row.endpoint != "embeddings" else None,
        deprecated_on=row.announced_on,
        shutdown_on=None if kept else row.shutdown_on,
        replacement=row.replacement,
    )


def builtin_specs() -> list[ModelSpec]:
    """Catalog entries for every row of every retirement table (Codex's of 2023, the GPT-3
    migration of 2024), so that a retired name gets its own 404 naming the replacement."""
    return [_spec(row) for name in TABLES for row in migration_table(name)]


def openai_name_specs(configured: Iterable[ModelSpec] = ()) -> list[ModelSpec]:
    """Entries that answer OpenAI's current model names with whichever served model has the
    capability (chat; ``gpt-3.5-turbo-instruct``: completions), leaving out every name a
    ``configured`` spec claims as its id, an alias or a stable alias."""
    claimed = {
        name
        for spec in configured
        for name in (spec.id, *spec.aliases, spec.stable_alias)
        if name is not None
    }
    data = _data(OPENAI_NAMES)
    return [
        ModelSpec(id=name, capabilities=(capability,))
        for capability in (Capability.CHAT, Capability.COMPLETIONS)
        for name in data[capability.value]
        if name not in claimed
    ]

"""The built-in catalog: OpenAI's published migration table of 2024-01-04, as data.

``data/openai_2024_01_04.toml`` lists every retired model with its endpoint, published price and
recommended replacement. :func:`builtin_specs` turns it into catalog entries served by whatever
local model has the capability, so old code keeps working until the shutdown day and gets a
404 naming the replacement afterwards. The two edit models are the exception: kakehashi keeps
``/v1/edits`` alive for old code, so they stay served (deprecated, never shut down).
"""

from __future__ import annotations

from kakehashi.retirements import MIGRATION_TABLE, Endpoint, Migration, migration_table
from kakehashi.settings import ModelSpec

__all__ = ["MIGRATION_TABLE", "Endpoint", "Migration", "builtin_specs", "migration_table"]


def _spec(row: Migration) -> ModelSpec:
    price = None if row.price_per_1k is None else round(row.price_per_1k * 1000, 6)
    kept = row.endpoint == "edits"
    return ModelSpec(
        id=row.model,
        owned_by="openai",
        capabilities=(row.endpoint,),
        input_price=price,
        output_price=price if row.endpoint != "embeddings" else None,
        deprecated_on=row.announced_on,
        shutdown_on=None if kept else row.shutdown_on,
        replacement=row.replacement,
    )


def builtin_specs() -> list[ModelSpec]:
    """Catalog entries for every row of the migration table."""
    return [_spec(row) for row in migration_table()]

"""OpenAI's published model retirements, as data every layer may read.

Each table in ``gateway/data/`` lists the models one announcement retired, with their endpoint,
published price and recommended replacement. The gateway turns ``openai_2024_01_04.toml`` into
catalog entries (:mod:`kakehashi.gateway.builtin`); ``kakehashi migrate`` reads every table to
rewrite retired model names in old code. This module imports only the standard library, so the
client kit can read the tables without the gateway.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import Any, Literal

MIGRATION_TABLE = "openai_2024_01_04.toml"
"""The table the catalog serves (OpenAI's GPT-3 and first embeddings retirement)."""
TABLES = ("openai_2023_03_23.toml", MIGRATION_TABLE)
"""Every table, oldest announcement first."""
Endpoint = Literal["completions", "embeddings", "edits"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One row of a table: ``model`` on ``endpoint`` retires on ``shutdown_on``."""

    model: str
    endpoint: Endpoint
    announced_on: date
    shutdown_on: date
    replacement: str
    price_per_1k: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as the data file writes it (without the table-wide dates)."""
        row: dict[str, Any] = {"model": self.model, "endpoint": self.endpoint}
        if self.price_per_1k is not None:
            row["price_per_1k"] = self.price_per_1k
        row["replacement"] = self.replacement
        return row


def migration_table(name: str = MIGRATION_TABLE) -> list[Migration]:
    """The rows of one table, in published order."""
    data_dir = resources.files("kakehashi").joinpath("gateway", "data")
    data = tomllib.loads(data_dir.joinpath(name).read_text("utf-8"))
    return [
        Migration(
            model=row["model"],
            endpoint=row["endpoint"],
            announced_on=data["announced_on"],
            shutdown_on=data["shutdown_on"],
            replacement=row["replacement"],
            price_per_1k=row.get("price_per_1k"),
        )
        for row in data["models"]
    ]


def replacements() -> dict[str, str]:
    """Every retired model id → its recommended replacement (a later table wins)."""
    return {row.model: row.replacement for name in TABLES for row in migration_table(name)}

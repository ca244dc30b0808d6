"""The catalog as rows for people (``kakehashi models``): status and access per model."""

from __future__ import annotations

from datetime import date
from typing import Any

from kakehashi.errors import ModelNotFoundError
from kakehashi.gateway.catalog import Catalog, CatalogEntry
from kakehashi.gateway.context import Principal
from kakehashi.gateway.lifecycle import Status


def _access(entry: CatalogEntry, caller: Principal) -> str:
    if not caller.denied_models.isdisjoint(entry.names):
        return "no (denied to the key)"
    if caller.allowed_models is not None and caller.allowed_models.isdisjoint(entry.names):
        return "no (not in the key's allow-list)"
    if entry.tiers is not None and caller.tier is not None and caller.tier not in entry.tiers:
        return f"no (tiers: {', '.join(sorted(entry.tiers))})"
    return "yes"


def catalog_rows(catalog: Catalog, *, caller: Principal, today: date) -> list[dict[str, Any]]:
    """One row per catalog entry, then one per stable alias, in catalog order."""
    rows = []
    for entry in catalog.entries():
        rows.append(
            {
                "id": entry.id,
                "alias_of": entry.alias_of,
                "serves": entry.serves,
                "stable_alias": entry.stable_alias,
                "capabilities": sorted(str(c) for c in entry.capabilities),
                "owned_by": entry.owned_by,
                "status": entry.lifecycle.describe(today),
                "retired": entry.status(today) is Status.RETIRED,
                "access": _access(entry, caller),
                "context_window": entry.context_window,
                "input_price": entry.input_price,
                "output_price": entry.output_price,
            }
        )
    for alias in catalog.stable_aliases():
        try:
            target = catalog.resolve(alias, principal=caller, today=today)
        except ModelNotFoundError:  # no snapshot the caller may use today
            target = None
        rows.append(
            {
                "id": alias,
                "alias_of": target.id if target else None,
                "serves": target.serves if target else None,
                "stable_alias": None,
                "capabilities": sorted(str(c) for c in target.capabilities) if target else [],
                "owned_by": target.owned_by if target else "",
                "status": f"stable alias → {target.id}" if target else "stable alias (no target)",
                "retired": target is None,
                "access": "yes" if target else "no",
                "context_window": target.context_window if target else None,
                "input_price": target.input_price if target else None,
                "output_price": target.output_price if target else None,
            }
        )
    return rows

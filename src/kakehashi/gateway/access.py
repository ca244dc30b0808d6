"""Who is calling, as the settings' keys say, and which models they may use.

A configured key stands for a :class:`~kakehashi.gateway.context.Principal`: a tier and maybe
an allow-list of model ids. A model may be restricted to some tiers. A principal without access
must not learn that the model exists, so the gateway answers exactly as for an unknown model.
"""

from __future__ import annotations

from collections.abc import Sequence

from kakehashi.gateway.context import Principal, StaticKeyStore, key_hash
from kakehashi.settings import KeySpec, Settings


def principal_for(key: KeySpec) -> Principal:
    """The principal a configured key stands for (its ledger id is a hash prefix, never the
    key itself)."""
    allowed = frozenset(key.models) if key.models is not None else None
    return Principal(
        key_id=f"key-{key_hash(key.key)[:16]}",
        label=key.label,
        tier=key.tier,
        allowed_models=allowed,
    )


def settings_key_store(settings: Settings) -> StaticKeyStore:
    """A key store of the settings' keys (``[[keys]]`` and ``api_keys``); the first spelling
    of a key wins."""
    keys: dict[str, Principal] = {}
    for spec in settings.all_keys():
        keys.setdefault(spec.key, principal_for(spec))
    return StaticKeyStore(keys)


def tiers_from(ladder: Sequence[str], minimum: str) -> frozenset[str]:
    """``minimum`` and every tier above it in ``ladder`` (lowest first)."""
    return frozenset(ladder[ladder.index(minimum) :])

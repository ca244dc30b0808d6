"""Who is calling, and which models they may use.

A caller is anonymous (an open server) or holds a configured key. A key may belong to a tier and
may carry an explicit allow-list of model ids; a model may be restricted to some tiers. A caller
without access must not learn that the model exists, so the gateway answers exactly as for an
unknown model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kakehashi.settings import KeySpec


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity behind a request: ``label`` for logs, ``tier`` and ``allowed`` for access.

    ``tier=None`` passes every tier restriction; ``allowed=None`` means no allow-list.
    """

    label: str = "anonymous"
    tier: str | None = None
    allowed: frozenset[str] | None = None

    def may_use(self, names: Iterable[str], tiers: frozenset[str] | None) -> bool:
        """Whether the caller may use a model known by ``names`` that ``tiers`` may use."""
        if self.allowed is not None and self.allowed.isdisjoint(names):
            return False
        return tiers is None or self.tier is None or self.tier in tiers


def caller_for(key: KeySpec) -> Caller:
    """The access a configured key grants."""
    allowed = frozenset(key.models) if key.models is not None else None
    return Caller(label=key.label, tier=key.tier, allowed=allowed)


ANONYMOUS = Caller()
"""The caller of a server without keys: unrestricted."""


def tiers_from(ladder: Sequence[str], minimum: str) -> frozenset[str]:
    """``minimum`` and every tier above it in ``ladder`` (lowest first)."""
    return frozenset(ladder[ladder.index(minimum) :])

"""The seams every gateway call carries and the platform plugs into.

A route turns an HTTP request into a :class:`RequestContext` (who is calling, the request id,
a deadline) and hands it to the gateway with the request. Around each call the gateway asks
three small protocols, each with an in-memory default here so the embedded install needs
nothing else:

- :class:`KeyStore` turns a presented API key into a :class:`Principal`;
- :class:`Limiter` admits a request against rate limits before it runs and settles the
  token charge once the real usage is known;
- :class:`UsageSink` receives one :class:`UsageRecord` per backend attempt, always: success,
  error, or a stream the client abandoned.

``kakehashi.platform`` implements them on SQLite/PostgreSQL and Redis.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


class Priority(enum.IntEnum):
    """How urgently a request should run; lower values run first."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity behind a request and what it may use.

    ``key_id`` names the key in the ledger and never is the key itself. ``tier=None`` passes
    every tier restriction; ``allowed_models=None`` means no allow-list, while
    ``denied_models`` always applies.
    """

    key_id: str
    label: str
    tier: str | None = None
    allowed_models: frozenset[str] | None = None
    denied_models: frozenset[str] = frozenset()
    store_bodies: bool = False
    is_admin: bool = False

    def may_use(self, names: Iterable[str], tiers: frozenset[str] | None) -> bool:
        """Whether the principal may use a model known by ``names`` that ``tiers`` may use."""
        names = frozenset(names)
        if not self.denied_models.isdisjoint(names):
            return False
        if self.allowed_models is not None and self.allowed_models.isdisjoint(names):
            return False
        return tiers is None or self.tier is None or self.tier in tiers


OPEN_ACCESS = Principal(key_id="anonymous", label="anonymous")
"""The principal of every request to a server that has no keys: unrestricted."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What travels with one request through the gateway: required, never defaulted.

    ``deadline`` is a ``time.monotonic()`` instant after which the request should be given up
    (None: no deadline). ``batch_id`` is set when the batch runner makes the request.
    """

    principal: Principal
    request_id: str
    deadline: float | None = None
    priority: Priority = Priority.INTERACTIVE
    batch_id: str | None = None


# -- keys ----------------------------------------------------------------------------------


class KeyStore(Protocol):
    """Looks up presented API keys."""

    @property
    def auth_required(self) -> bool:
        """Whether requests must carry a key (False: an open server, every request is
        :data:`OPEN_ACCESS`)."""
        ...

    async def authenticate(self, presented: str) -> Principal | None:
        """The principal of ``presented``, or None if it is unknown, revoked or expired."""
        ...


def key_hash(key: str) -> str:
    """The hex SHA-256 of a key: what stores keep instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


class StaticKeyStore:
    """Keys fixed at start-up (from the settings), compared by hash in constant time."""

    def __init__(self, keys: Mapping[str, Principal]) -> None:
        self._by_hash = {key_hash(key): principal for key, principal in keys.items()}

    @property
    def auth_required(self) -> bool:
        return bool(self._by_hash)

    async def authenticate(self, presented: str) -> Principal | None:
        wanted = key_hash(presented)
        found: Principal | None = None
        # Compare against every stored hash so timing reveals nothing about near misses.
        for stored, principal in self._by_hash.items():
            if hmac.compare_digest(wanted, stored) and found is None:
                found = principal
        return found


# -- rate limits -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let through by a :class:`Limiter`: the tokens charged up front and the
    ``x-ratelimit-*`` headers to send with the response."""

    charged_tokens: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    ticket: object = None  # the limiter's own handle for settle()


class Limiter(Protocol):
    """Admits requests against request and token rates.

    ``admit`` raises :class:`~kakehashi.errors.RateLimitError` (429) when a limit is reached;
    ``settle`` refunds or charges the difference between the estimate and ``used_tokens``.
    """

    async def admit(self, ctx: RequestContext, model: str, estimated_tokens: int) -> Admission:
        """Admit one request to ``model`` charging ``estimated_tokens`` up front."""
        ...

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """Reconcile the up-front charge with the tokens the request really used."""
        ...


class Unlimited:
    """A limiter that admits everything and sends no rate-limit headers."""

    async def admit(self, ctx: RequestContext, model: str, estimated_tokens: int) -> Admission:
        return Admission(charged_tokens=estimated_tokens)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        return None


# -- usage -----------------------------------------------------------------------------------

UsageStatus = Literal["success", "error", "aborted"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One backend attempt of one request, as the ledger keeps it.

    Times are Unix seconds (``started_at``) and seconds (``latency``, ``time_to_first_token``).
    ``status`` is ``aborted`` when the client went away before the end.
    """

    request_id: str
    attempt: int
    key_id: str
    model: str
    backend: str
    endpoint: str
    started_at: float
    latency: float
    status: UsageStatus
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    time_to_first_token: float | None = None
    streamed: bool = False
    error_code: str | None = None
    cost_usd: float | None = None
    batch_id: str | None = None


class UsageSink(Protocol):
    """Receives every usage record. ``record`` must not block: sinks that write to storage
    queue the record and write it off the request path."""

    def record(self, usage: UsageRecord) -> None:
        """Accept one record."""
        ...


class MemoryUsageSink:
    """Keeps the most recent records in memory (the embedded default, and a fake for tests)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._records: list[UsageRecord] = []

    def record(self, usage: UsageRecord) -> None:
        self._records.append(usage)
        if len(self._records) > self.capacity:
            del self._records[: len(self._records) - self.capacity]

    @property
    def records(self) -> Sequence[UsageRecord]:
        """The records kept, oldest first."""
        return tuple(self._records)

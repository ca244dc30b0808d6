"""Rate limits and budgets: the gateway's :class:`~kakehashi.gateway.context.Limiter`.

A key may carry requests/min and tokens/min limits of its own and per model; each is one GCRA
bucket (:mod:`kakehashi.platform.gcra`). :meth:`PlatformLimiter.admit` charges one request and
the estimated tokens (the prompt's tokens plus ``max_tokens``, as OpenAI counts) to every
bucket that applies, all or nothing, and :meth:`PlatformLimiter.settle` gives back (or charges)
the difference once the real usage is known. Requests are never given back: failed requests
count, as at OpenAI. A key over its budget is refused before any of that with 429
``insufficient_quota``.

The buckets live in a :class:`RateStore`: in process (:class:`MemoryRateStore`, the default)
or in Redis (:class:`~kakehashi.platform.ratelimit_redis.RedisRateStore`), shared by replicas.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from kakehashi.errors import QuotaExceededError, RateLimitError, ServiceUnavailableError
from kakehashi.gateway.context import Admission, Principal, RequestContext
from kakehashi.platform import gcra
from kakehashi.platform.gcra import CellState, go_duration
from kakehashi.platform.keys import ApiKey, ModelLimit

logger = logging.getLogger(__name__)

Resource = Literal["requests", "tokens"]
_UNIT = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


@dataclass(frozen=True, slots=True)
class Cell:
    """One bucket a request is charged to: ``name`` identifies it in the store; ``model`` is
    None for the key's own limit."""

    name: str
    resource: Resource
    limit: int
    model: str | None = None


class LimiterUnavailableError(Exception):
    """The rate store cannot be reached."""


class RateStore(Protocol):
    """Where the buckets live."""

    async def take(self, cells: Sequence[Cell], amounts: Sequence[int]) -> list[CellState]:
        """Charge ``amounts[i]`` to ``cells[i]``, all or none: if any cell refuses, none is
        charged. Raises :class:`LimiterUnavailableError` if the store cannot be reached."""
        ...

    async def adjust(self, cells: Sequence[Cell], deltas: Sequence[int]) -> None:
        """Charge ``deltas[i]`` more to ``cells[i]`` (negative: give back)."""
        ...


class MemoryRateStore:
    """Buckets in this process: exact, and shared by nothing else."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    async def take(self, cells: Sequence[Cell], amounts: Sequence[int]) -> list[CellState]:
        with self._lock:
            now = self.clock()
            results = [
                gcra.take(self._tats.get(c.name), now, c.limit, n)
                for c, n in zip(cells, amounts, strict=True)
            ]
            if all(state.allowed for _, state in results):
                for cell, (tat, _) in zip(cells, results, strict=True):
                    assert tat is not None
                    self._tats[cell.name] = tat
            self._forget_full(now)
            return [state for _, state in results]

    async def adjust(self, cells: Sequence[Cell], deltas: Sequence[int]) -> None:
        with self._lock:
            now = self.clock()
            for cell, delta in zip(cells, deltas, strict=True):
                tat = gcra.adjust(self._tats.get(cell.name), now, cell.limit, delta)
                if tat is None:
                    self._tats.pop(cell.name, None)
                else:
                    self._tats[cell.name] = tat

    def _forget_full(self, now: float) -> None:
        # Full buckets need no entry; sweep now and then so idle keys do not accumulate.
        if len(self._tats) > 10_000:
            self._tats = {name: tat for name, tat in self._tats.items() if tat > now}


def cells_for(
    key_id: str, key: ApiKey | None, model: str, defaults: ModelLimit | None = None
) -> list[Cell]:
    """The buckets a request of the key ``key_id`` (stored as ``key``, or not stored) to
    ``model`` is charged to."""
    own = ModelLimit(key.rpm, key.tpm) if key is not None else (defaults or ModelLimit())
    cells: list[Cell] = []
    scope = key_id
    # The {key} hash tag keeps a key's buckets in one Redis Cluster slot (one script call).
    if own.rpm:
        cells.append(Cell(f"{{{scope}}}:requests", "requests", own.rpm))
    if own.tpm:
        cells.append(Cell(f"{{{scope}}}:tokens", "tokens", own.tpm))
    per_model = key.model_limits.get(model) if key is not None else None
    if per_model is not None:
        if per_model.rpm:
            cells.append(Cell(f"{{{scope}}}:m:{model}:requests", "requests", per_model.rpm, model))
        if per_model.tpm:
            cells.append(Cell(f"{{{scope}}}:m:{model}:tokens", "tokens", per_model.tpm, model))
    return cells


def rate_limit_headers(cells: Sequence[Cell], states: Sequence[CellState]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers from the tightest bucket of each resource."""
    headers: dict[str, str] = {}
    for resource in ("requests", "tokens"):
        mine = [s for c, s in zip(cells, states, strict=True) if c.resource == resource]
        if not mine:
            continue
        tightest = min(mine, key=lambda s: (s.remaining, -s.reset_after))
        headers[f"x-ratelimit-limit-{resource}"] = str(tightest.limit)
        headers[f"x-ratelimit-remaining-{resource}"] = str(tightest.remaining)
        headers[f"x-ratelimit-reset-{resource}"] = go_duration(tightest.reset_after)
    return headers


@dataclass(frozen=True, slots=True)
class _Ticket:
    token_cells: tuple[Cell, ...]


class _Warnings:
    """Logs a failing store loudly, but not once per request."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = float("-inf")
        self._suppressed = 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        logger.error("%s%s", message, more)
        self._last, self._suppressed = now, 0


class PlatformLimiter:
    """Budgets, then per-key and per-key-and-model request and token rates.

    ``keys(key_id)`` gives the stored key (limits, budget, spend so far) or None for keys that
    are not stored (settings-file keys, an open server), which get ``defaults``.
    ``pending_spend(key_id)`` adds spend not yet written to the ledger. With ``fail_open``, a
    store that cannot be reached admits requests (logging loudly); otherwise they get a 503.
    """

    def __init__(
        self,
        store: RateStore,
        *,
        keys: Callable[[str], ApiKey | None],
        pending_spend: Callable[[str], float] = lambda _key_id: 0.0,
        defaults: ModelLimit | None = None,
        fail_open: bool = True,
    ) -> None:
        self.store = store
        self.keys = keys
        self.pending_spend = pending_spend
        self.defaults = defaults
        self.fail_open = fail_open
        self._warnings = _Warnings()
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(self, ctx: RequestContext, model: str, estimated_tokens: int) -> Admission:
        key = self.keys(ctx.principal.key_id)
        if key is not None:
            self._check_budget(key)
        cells = cells_for(ctx.principal.key_id, key, model, self.defaults)
        if not cells:
            return Admission(charged_tokens=estimated_tokens)
        for cell in cells:
            if cell.resource == "tokens" and estimated_tokens > cell.limit:
                raise _too_large(ctx.principal, cell, model, estimated_tokens)
        amounts = [1 if c.resource == "requests" else estimated_tokens for c in cells]
        try:
            states = await self.store.take(cells, amounts)
        except LimiterUnavailableError as exc:
            return self._unavailable(exc, estimated_tokens)
        headers = rate_limit_headers(cells, states)
        answers = zip(cells, states, amounts, strict=True)
        refused = [(c, s, n) for c, s, n in answers if not s.allowed]
        if refused:
            cell, state, amount = max(refused, key=lambda r: r[1].retry_after)
            raise _limit_reached(ctx.principal, cell, state, amount, model, headers)
        ticket = _Ticket(tuple(c for c in cells if c.resource == "tokens"))
        return Admission(charged_tokens=estimated_tokens, headers=headers, ticket=ticket)

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """Start giving back (or charging) the difference; it is applied off the request path,
        so a response never waits for a second round trip to the store (:meth:`flush` waits)."""
        ticket = admission.ticket
        if not isinstance(ticket, _Ticket) or not ticket.token_cells:
            return
        delta = used_tokens - admission.charged_tokens
        if delta == 0:
            return
        task = asyncio.create_task(self._adjust(ticket.token_cells, delta))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _adjust(self, cells: Sequence[Cell], delta: int) -> None:
        try:
            await self.store.adjust(cells, [delta] * len(cells))
        except LimiterUnavailableError as exc:
            self._warnings.warn(f"rate limiter: could not settle a token charge: {exc}")

    async def flush(self) -> None:
        """Wait until every settlement started so far is applied."""
        while self._settling:
            await asyncio.gather(*self._settling)

    def _check_budget(self, key: ApiKey) -> None:
        if key.budget_usd is None:
            return
        spent = key.spent_usd + self.pending_spend(key.id)
        if spent >= key.budget_usd:
            raise QuotaExceededError(
                f"You exceeded your current quota: the key '{key.name}' has spent "
                f"${spent:.4f} of its ${key.budget_usd:.2f} budget. Ask an administrator to "
                "raise the budget or issue a new key."
            )

    def _unavailable(self, exc: Exception, estimated_tokens: int) -> Admission:
        if self.fail_open:
            self._warnings.warn(
                f"rate limiter unavailable, ADMITTING REQUESTS WITHOUT LIMITS (fail-open): {exc}"
            )
            return Admission(charged_tokens=estimated_tokens)
        self._warnings.warn(f"rate limiter unavailable, refusing requests (fail-closed): {exc}")
        raise ServiceUnavailableError(
            "The rate limiter is unavailable, so the request cannot be admitted. Please retry "
            "in a few seconds."
        )


def _where(principal: Principal, cell: Cell, model: str) -> str:
    subject = f"{model} on" if cell.model is not None else "the"
    return f"{subject} API key '{principal.label}' ({principal.key_id})"


def _too_large(principal: Principal, cell: Cell, model: str, requested: int) -> RateLimitError:
    return RateLimitError(
        f"Request too large for {_where(principal, cell, model)} on {_UNIT['tokens']}: "
        f"Limit {cell.limit}, Requested {requested}. The input or output tokens must be "
        "reduced in order to run successfully.",
        limit_type="tokens",
        retryable=False,
    )


def _limit_reached(
    principal: Principal,
    cell: Cell,
    state: CellState,
    amount: int,
    model: str,
    headers: Mapping[str, str],
) -> RateLimitError:
    used = cell.limit - state.remaining
    wait = go_duration(state.retry_after)
    return RateLimitError(
        f"Rate limit reached for {_where(principal, cell, model)} on {_UNIT[cell.resource]}: "
        f"Limit {cell.limit}, Used {used}, Requested {amount}. Please try again in {wait}.",
        limit_type=cell.resource,
        retry_after=state.retry_after if math.isfinite(state.retry_after) else None,
        headers=headers,
    )

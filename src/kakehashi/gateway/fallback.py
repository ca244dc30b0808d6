"""What to do after an attempt failed: try again, move on to the next model, or give up.

- **Retry** (the same model, after a backoff, on another replica if there is one): connect
  errors, timeouts, 429 rate limits and 5xx, the kinds of failure that pass. The backoff grows
  exponentially, with jitter,, and an upstream's ``Retry-After`` is honoured when it is short
  enough; a longer one moves on at once.
- **Fall back** (the next model of the chain): once retries are spent, and at once when the
  context is too long for the model (a longer-context model may take it), the quota is spent,
  or the deployment refused kakehashi itself (its key, a model it does not have), or the local
  engine's queue is full.
- **Give up**: every other error is the request's own fault (a bad parameter), and another model
  would refuse it too.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from kakehashi.errors import (
    ContextLengthExceededError,
    KakehashiError,
    ServiceUnavailableError,
    UpstreamError,
)


class Next(enum.Enum):
    """The step after a failed attempt."""

    RETRY = "retry"
    FALL_BACK = "fall back"
    GIVE_UP = "give up"


_MOVE_ON_CODES = frozenset(
    {"context_length_exceeded", "insufficient_quota", "model_not_found", "upstream_unauthorized"}
)


def next_step(error: KakehashiError) -> Next:
    """How the gateway goes on after ``error``."""
    if isinstance(error, ContextLengthExceededError) or error.code in _MOVE_ON_CODES:
        return Next.FALL_BACK
    if isinstance(error, UpstreamError):
        return Next.RETRY if error.retryable else Next.GIVE_UP
    if isinstance(error, ServiceUnavailableError):  # a full local queue: another model may
        return Next.FALL_BACK  # take it, while the client's own retry comes later
    return Next.GIVE_UP


def is_deployment_failure(error: KakehashiError) -> bool:
    """Whether ``error`` says the deployment is unwell (counts towards its circuit breaker),
    rather than busy (429) or the request at fault."""
    if isinstance(error, UpstreamError):
        return error.status_code >= 500 or error.code == "upstream_unauthorized"
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries per model, and how long to wait before each."""

    max_retries: int = 2
    backoff: float = 0.25
    backoff_max: float = 8.0
    max_retry_after: float = 20.0

    def delay(self, retry: int, error: KakehashiError, rng: random.Random) -> float | None:
        """Seconds to wait before retry number ``retry`` (0 first), or None to move on: retries
        spent, or a ``Retry-After`` longer than the policy honours."""
        if retry >= self.max_retries:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_after else None
        ceiling = min(self.backoff_max, self.backoff * 2**retry)
        return rng.uniform(ceiling / 2, ceiling)

"""Which deployment takes the next attempt: the least busy one whose circuit is not open.

Every deployment has a :class:`Health`: how many requests it has in flight, and a circuit
breaker. ``failures`` consecutive failures open the circuit: the deployment gets no traffic for
``cooldown`` seconds, then one request (the probe) is let through; its success closes the
circuit, its failure opens it again. A rate-limited deployment (a 429 with ``Retry-After``) is
left alone for that long without counting as a failure.

Ties in outstanding requests go round-robin, so that sequential traffic spreads over replicas.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kakehashi.gateway.catalog import Deployment

Clock = Callable[[], float]

_EARLY = 0.05
"""Seconds early a timer may wake; a rate-limited deployment is free again this close to its
time."""


class Circuit(enum.Enum):
    """Where a deployment's breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True)
class Health:
    """What the router knows of one deployment."""

    outstanding: int = 0
    failures: int = 0
    opened_until: float = 0.0  # circuit open (or rate-limited) until this monotonic instant
    circuit: Circuit = Circuit.CLOSED
    probing: bool = False
    trips: int = field(default=0)


class Router:
    """Orders deployments for attempts and keeps their health."""

    def __init__(
        self, *, failures: int = 5, cooldown: float = 30.0, clock: Clock = time.monotonic
    ) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._health: dict[tuple[str, str], Health] = {}
        self._turn = itertools.count()

    def health(self, deployment: Deployment) -> Health:
        """The health record of ``deployment`` (created on first sight)."""
        key = deployment.key
        found = self._health.get(key)
        if found is None:
            found = self._health[key] = Health()
        return found

    def pick(
        self, deployments: Sequence[Deployment], avoid: Deployment | None = None
    ) -> Deployment | None:
        """The deployment for the next attempt, or None when every circuit is open.

        Closed circuits with the fewest requests in flight come first (``avoid``, the one
        that just failed, only if it is alone); an expired cool-down lets one probe through.
        """
        now = self._clock()
        best: list[Deployment] = []
        fewest = -1
        for deployment in deployments:
            health = self.health(deployment)
            if not self._available(health, now):
                continue
            if len(deployments) > 1 and deployment is avoid:
                continue
            if fewest < 0 or health.outstanding < fewest:
                best, fewest = [deployment], health.outstanding
            elif health.outstanding == fewest:
                best.append(deployment)
        if not best:
            if avoid is not None and self._available(self.health(avoid), now):
                return avoid
            return None
        return best[next(self._turn) % len(best)]

    def _available(self, health: Health, now: float) -> bool:
        if health.circuit is Circuit.CLOSED:
            return now + _EARLY >= health.opened_until
        if health.circuit is Circuit.OPEN and now >= health.opened_until:
            health.circuit = Circuit.HALF_OPEN
            health.probing = False
        return health.circuit is Circuit.HALF_OPEN and not health.probing

    def retry_in(self, deployments: Sequence[Deployment]) -> float:
        """Seconds until the first of ``deployments`` takes traffic again."""
        now = self._clock()
        waits = [max(0.0, self.health(d).opened_until - now) for d in deployments]
        return min(waits, default=0.0)

    def begin(self, deployment: Deployment) -> None:
        """An attempt starts on ``deployment`` (a half-open one starts its probe)."""
        health = self.health(deployment)
        health.outstanding += 1
        if health.circuit is Circuit.HALF_OPEN:
            health.probing = True

    def end(self, deployment: Deployment) -> None:
        """An attempt on ``deployment`` is over, whatever its outcome."""
        health = self.health(deployment)
        health.outstanding -= 1

    def succeeded(self, deployment: Deployment) -> None:
        """The deployment answered: its circuit closes."""
        health = self.health(deployment)
        health.failures = 0
        health.circuit = Circuit.CLOSED
        health.probing = False

    def failed(self, deployment: Deployment) -> None:
        """The deployment failed (unreachable, timed out, 5xx): count towards opening."""
        health = self.health(deployment)
        health.failures += 1
        if health.circuit is Circuit.HALF_OPEN or health.failures >= self.failures:
            health.circuit = Circuit.OPEN
            health.opened_until = self._clock() + self.cooldown
            health.probing = False
            health.trips += 1

    def rate_limited(self, deployment: Deployment, retry_after: float | None) -> None:
        """The deployment said to slow down: send it nothing for ``retry_after`` seconds."""
        health = self.health(deployment)
        if retry_after:
            health.opened_until = max(health.opened_until, self._clock() + retry_after)
        if health.circuit is Circuit.HALF_OPEN:
            health.probing = False

"""GCRA, the generic cell rate algorithm: a token bucket kept as one number per limit.

A limit of ``L`` per ``window`` lets one unit through every ``interval = window / L`` with a
burst of up to ``L`` at once. Each bucket stores only its *theoretical arrival time* (TAT): the
moment it would be full again if nothing more arrived. Taking ``n`` units moves the TAT
``n * interval`` later; that is allowed while the TAT stays within one ``window`` of now. There
is no fixed window, so no edge where two windows' worth gets through at once; the time until a
request fits (``retry_after``) and until the bucket is full (``reset_after``, what OpenAI's
``x-ratelimit-reset-*`` headers give) fall out exactly. Giving units back moves the TAT
earlier, never before now.

The same arithmetic runs in process (:func:`take`) and inside Redis
(:mod:`kakehashi.platform.ratelimit_redis`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WINDOW_SECONDS = 60.0
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class CellState:
    """What one bucket says about one request.

    ``remaining`` is what is left after this request (or, if refused, without it);
    ``reset_after`` the seconds until the bucket is full again; ``retry_after`` the seconds
    until this request would fit (0 when allowed; ``inf`` when it never fits).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0


def take(
    tat: float | None, now: float, limit: int, amount: int, window: float = WINDOW_SECONDS
) -> tuple[float | None, CellState]:
    """Try to take ``amount`` units from a bucket whose TAT is ``tat`` (None: full).

    Returns the new TAT (None if refused: the bucket is unchanged) and the bucket's answer.
    """
    interval = window / limit
    start = now if tat is None or tat < now else tat
    new_tat = start + amount * interval
    allow_at = new_tat - window
    if allow_at > now + _EPSILON:
        retry = math.inf if amount > limit else allow_at - now
        remaining = math.floor((now + window - start) / interval + _EPSILON)
        return None, CellState(False, limit, max(0, remaining), start - now, retry)
    remaining = math.floor((now + window - new_tat) / interval + _EPSILON)
    return new_tat, CellState(True, limit, max(0, remaining), new_tat - now)


def adjust(
    tat: float | None, now: float, limit: int, delta: int, window: float = WINDOW_SECONDS
) -> float | None:
    """The TAT after charging ``delta`` more units (negative: a refund); None when full."""
    start = now if tat is None or tat < now else tat
    moved = start + delta * (window / limit)
    return moved if moved > now else None


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration`` prints it, to the millisecond: ``20ms``,
    ``1.5s``, ``6m0s``, ``1h0m0s`` (OpenAI's ``x-ratelimit-reset-*`` format)."""
    millis = max(0, math.ceil(seconds * 1000 - _EPSILON))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"

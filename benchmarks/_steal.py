"""CPU time the hypervisor took from this VM (``steal`` in /proc/stat) during a benchmark.

On a shared VM the cores run only part of the time the benchmark wants them when neighbours
are busy, and every figure measured meanwhile slows down with it (up to 80 % stolen was seen
here in one minute). The benchmarks print this share next to each model's figures, so that a
slow run can be told from a slow change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_STAT = Path("/proc/stat")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative CPU time of the whole machine, in clock ticks."""

    busy: int  # user, nice, system, irq, softirq
    steal: int

    @classmethod
    def now(cls) -> CpuTimes | None:
        """The current counters, or None where /proc/stat cannot be read."""
        try:
            first_line = _STAT.read_text(encoding="ascii").split("\n", 1)[0]
        except OSError:
            return None
        ticks = [int(v) for v in first_line.split()[1:]] + [0] * 8
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
        return cls(user + nice + system + irq + softirq, steal)


def stolen_share(start: CpuTimes | None, end: CpuTimes | None) -> float | None:
    """Share of the CPU time this VM wanted (ran or had stolen) that was stolen in between."""
    if start is None or end is None:
        return None
    busy, steal = end.busy - start.busy, end.steal - start.steal
    return steal / (busy + steal) if busy + steal > 0 else 0.0


def report_line(share: float | None) -> str:
    """One line for a report."""
    if share is None:
        return "CPU time stolen by the hypervisor: unknown (no /proc/stat)"
    warning = " (figures of this model are slowed by that much)" if share > 0.05 else ""
    return f"CPU time stolen by the hypervisor while measuring: {100 * share:.0f}%{warning}"

"""Busy neighbours for a benchmark: processes that keep cores busy beside the system measured.

A real host shares its cores: the server's own event loop, a database, a neighbour's job.
``--contention N`` runs N of these beside every system, so that figures show how each one
degrades when the cores are not free, in the same run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Pure Python arithmetic: it takes a core and little memory bandwidth, as a busy
# interpreter or a compiler would.
_BUSY_LOOP = "x = 0\nwhile True:\n    x = (x * 31 + 7) % 1000003\n"


@contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``count`` CPU-bound processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP]) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()

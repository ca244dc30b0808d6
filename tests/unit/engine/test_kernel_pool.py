"""The kernels object is resolved once from the settings, and the kernels' own parallel loop
gives the same bits however its threads are scheduled: from several threads at once, in a
forked child, and with more threads than cores."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from kakehashi.engine import kernels
from kakehashi.engine.kernels import TORCH_KERNELS, Kernels, resolve_kernels

CPU = torch.device("cpu")
needs_kernels = pytest.mark.skipif(
    not kernels.bf16_kernels_available(), reason="no AVX-512 BF16 CPU or no compiler"
)


def test_switched_off_float32_or_off_the_cpu_the_model_gets_torchs_kernels():
    assert resolve_kernels(False, device=CPU, dtype=torch.bfloat16) == TORCH_KERNELS
    assert resolve_kernels(True, device=CPU, dtype=torch.float32) == TORCH_KERNELS
    assert resolve_kernels(True, device=torch.device("meta"), dtype=torch.bfloat16) == (
        TORCH_KERNELS
    )


@needs_kernels
def test_bfloat16_on_this_cpu_resolves_to_ours():
    resolved = resolve_kernels(True, device=CPU, dtype=torch.bfloat16)
    assert resolved == Kernels(bf16=True, amx=kernels.amx_usable())


def test_torch_kernels_argmax_is_torchs_and_ours_agrees():
    x = torch.randn(5, 999, generator=torch.Generator().manual_seed(1))
    assert torch.equal(TORCH_KERNELS.argmax_rows(x), torch.argmax(x, -1))
    if kernels.bf16_kernels_available():
        ours = Kernels(bf16=True)
        assert torch.equal(ours.argmax_rows(x.bfloat16()), torch.argmax(x.bfloat16(), -1))
        assert torch.equal(ours.argmax_rows(x[0]), torch.argmax(x[0], -1))  # 1-D: torch's


def _operands(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 576, generator=g).bfloat16()
    w = (torch.randn(1536, 576, generator=g) * 0.05).bfloat16()
    return x, w


@needs_kernels
def test_loops_started_from_several_threads_at_once_give_the_same_bits():
    ops = torch.ops.kakehashi
    x, w = _operands(2)
    want = ops.linear(x, w, None)
    results: list[torch.Tensor] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            got = ops.linear(x, w, None)
            with lock:
                results.append(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 200
    assert all(torch.equal(r, want) for r in results)


_CHILD = """
import os, sys, torch
from kakehashi.engine import kernels
assert kernels.bf16_kernels_available()
g = torch.Generator().manual_seed(2)
x = torch.randn(3, 576, generator=g).bfloat16()
w = (torch.randn(1536, 576, generator=g) * 0.05).bfloat16()
want = torch.ops.kakehashi.linear(x, w, None)
if sys.argv[1] == "pinned":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(4)  # four threads on one core: workers are mostly off it
    for _ in range(300):
        assert torch.equal(torch.ops.kakehashi.linear(x, w, None), want)
else:
    torch.set_num_threads(2)
    pid = os.fork()  # the pool's workers stay behind in the parent
    if pid == 0:
        alone = len(os.listdir("/proc/self/task"))
        ok = torch.equal(torch.ops.kakehashi.linear(x, w, None), want)
        # the child starts a worker of its own rather than running every loop alone
        helped = len(os.listdir("/proc/self/task")) > alone
        os._exit(0 if ok and helped else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
print("same bits")
"""


@needs_kernels
@pytest.mark.parametrize("how", ["pinned", "forked"])
def test_the_loop_never_waits_for_a_worker_that_is_not_running(how):
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, how],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same bits"

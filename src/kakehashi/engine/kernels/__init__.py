"""Our own CPU kernels for bfloat16 decode (AVX-512 BF16), compiled on first use.

The C++ sources next to this file are built with torch's extension builder (in a child
process) the first time a bfloat16 model is loaded on a CPU that has AVX-512 BF16 (about
30 s), then cached on disk by source and torch version. :func:`resolve_kernels` decides once,
from the ``cpu_kernels`` setting, the model's dtype and device and what builds and runs here,
which kernels an engine uses; the :class:`Kernels` it returns is passed to the model, the
runner and the KV cache. Where ours cannot run (no compiler, another CPU, or
``--no-cpu-kernels``) the model runs on torch's own kernels, with the same results up to float
rounding. Their parallel loops run on a pool of their own (``parallel.h``) that keeps working
when other processes take the cores.

Once loaded the ops are ``torch.ops.kakehashi.*``:

- ``linear(x, weight, bias)``: ``x @ weight.T + bias`` for a few rows (decode).
- ``amx_pack(weight)``, ``amx_linear(x, packed, n, k, bias)``: the same on AMX tiles, for
  decode batches of up to a few dozen rows.
- ``rms_norm(x, weight, eps)``: Hugging Face's RMSNorm.
- ``paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)``: one
  query token per sequence against its paged keys and values.
- ``rotary_``, ``silu_mul``, ``add_rms_norm_``: the small steps between them, fused.
- ``argmax_rows(x)``: ``torch.argmax(x, -1)`` for float32 or bfloat16 logits.
- ``embedding(table, ids)``: the rows of a bfloat16 table (the token embedding).
- ``store_kv_(k_cache, v_cache, slots, k, v)``: a step's keys and values into their slots.
- ``paged_prefill_attention(q, k_cache, v_cache, block_table, context_len, scale)``: causal
  attention of a prompt chunk against its sequence's paged keys and values (AMX only).
- ``decode_layer_(x, pending, <the layer's weights>, cos, signed_sin, k_cache, v_cache, slots,
  block_tables, context_lens, eps)``: a whole decoder layer of a decode step, chaining the
  ops above in C++ (the model's ``DecoderLayer.decode_step``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_SOURCES = [
    _HERE / name
    for name in (
        "linear.cpp",
        "attention.cpp",
        "pointwise.cpp",
        "amx_linear.cpp",
        "decoder_layer.cpp",
        "prefill_attention.cpp",
        "parallel.cpp",
    )
]
_HEADERS = [_HERE / name for name in ("bf16_vec.h", "ops.h", "amx.h", "parallel.h")]
_FLAGS = [
    "-O3",
    "-fopenmp",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512dq",
    "-mavx512bf16",
    "-mamx-tile",  # only the amx_* ops use these, and only where cpu_supports_amx()
    "-mamx-bf16",
]


@functools.cache
def _cpu_flags() -> frozenset[str]:
    if sys.platform != "linux":
        return frozenset()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return frozenset(flags.split(":", 1)[-1].split())


def cpu_supports_bf16_kernels() -> bool:
    """Whether this CPU has the AVX-512 BF16 instructions the kernels are written in."""
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= _cpu_flags()


def cpu_supports_amx() -> bool:
    """Whether this CPU has AMX tiles with bfloat16 (for ``amx_linear``)."""
    return {"amx_tile", "amx_bf16"} <= _cpu_flags()


@functools.cache
def amx_usable() -> bool:
    """Whether ``amx_linear`` runs here: the CPU has AMX, the kernels are loaded, and the
    kernel (Linux must grant a process the tile state) computes a small product right."""
    if not (cpu_supports_amx() and bf16_kernels_available()):
        return False
    weight = torch.eye(32, dtype=torch.bfloat16)
    x = torch.arange(64, dtype=torch.bfloat16).view(2, 32)
    try:
        y = torch.ops.kakehashi.amx_linear(x, torch.ops.kakehashi.amx_pack(weight), 32, 32, None)
    except RuntimeError as exc:
        log.warning("AMX unavailable, decode batches use oneDNN (%s)", str(exc).splitlines()[0])
        return False
    return bool(torch.equal(y, x))


@functools.cache
def bf16_kernels_available() -> bool:
    """Build (or find in the cache) and load the kernels; False where they cannot run.

    Loading registers ``torch.ops.kakehashi.*`` in this process; nothing calls them unless a
    :class:`Kernels` object resolved to use them is handed to it.
    """
    if not cpu_supports_bf16_kernels():
        return False
    try:
        torch.ops.load_library(str(_build()))
    except Exception as exc:  # a failed build only costs speed, never correctness
        log.warning(
            "CPU kernels unavailable, using torch's own (%s; --no-cpu-kernels skips the build)",
            str(exc).splitlines()[0],
        )
        log.debug("kernel build failure", exc_info=True)
        return False
    return True


@dataclass(frozen=True, slots=True)
class Kernels:
    """Which of kakehashi's CPU kernels a model and its engine run on, resolved once by
    :func:`resolve_kernels` and handed to the model, the runner and the KV cache.

    ``bf16``: the AVX-512 BF16 kernels (decode projections, norms, rotary, decode attention,
    the fused decode layer, argmax). ``amx``: also the AMX matrix product (decode batches and
    prompts) and prompt attention. :data:`TORCH_KERNELS` (both off) is torch's own path.
    """

    bf16: bool = False
    amx: bool = False

    def argmax_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``torch.argmax(x, dim=-1)``; our kernel for 2-D float32 or bfloat16 CPU logits."""
        kernel_dtype = x.dtype in (torch.float32, torch.bfloat16)
        if self.bf16 and x.device.type == "cpu" and x.dim() == 2 and kernel_dtype:
            return torch.ops.kakehashi.argmax_rows(x)
        return torch.argmax(x, dim=-1)


TORCH_KERNELS = Kernels()


def resolve_kernels(enabled: bool, *, device: torch.device, dtype: torch.dtype) -> Kernels:
    """The kernels a ``dtype`` model on ``device`` runs on: ours where ``enabled`` (the
    ``cpu_kernels`` setting), the model is bfloat16 on a CPU and they build and run here;
    torch's otherwise. Builds them on first use (about 30 s, then cached on disk)."""
    if not enabled or device.type != "cpu" or dtype != torch.bfloat16:
        return TORCH_KERNELS
    if not bf16_kernels_available():
        return TORCH_KERNELS
    return Kernels(bf16=True, amx=amx_usable())


def _build() -> Path:
    """The kernels' shared library, built in a child process if it is not in the cache."""
    source = b"".join(path.read_bytes() for path in (*_SOURCES, *_HEADERS))
    digest = hashlib.sha256(source + torch.__version__.encode() + " ".join(_FLAGS).encode())
    name = f"kakehashi_cpu_kernels_{digest.hexdigest()[:12]}"
    build_dir = Path(platformdirs.user_cache_dir("kakehashi")) / "kernels" / name
    library = build_dir / f"{name}.so"
    if library.exists():
        return library
    build_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_build_lock(build_dir)
    log.info("building kakehashi's CPU kernels (once, about 30 s)")
    # In a child: torch's builder runs `ninja` from PATH, and the ninja wheel's binary may
    # only be in our venv; the child gets it on its PATH and ours stays as it is.
    command = [sys.executable, "-m", "kakehashi.engine.kernels.build", str(build_dir), name]
    done = subprocess.run(command, env=_build_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0 or not library.exists():
        raise RuntimeError(f"the kernel build failed: {_last_line(done.stderr)}")
    return library


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    if shutil.which("ninja"):
        return env
    try:
        import ninja  # type: ignore[import-untyped]
    except ImportError:
        return env
    env["PATH"] = ninja.BIN_DIR + os.pathsep + env.get("PATH", "")
    return env


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def compile_into(build_dir: Path, name: str) -> None:
    """Compile the sources into ``build_dir/name.so`` (what the build child runs)."""
    from torch.utils import cpp_extension

    cpp_extension.load(
        name=name,
        sources=[str(path) for path in _SOURCES],
        extra_cflags=_FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )


# A build takes well under this; a lock file older than it was left by a killed build.
STALE_LOCK_SECONDS = 600.0


def clear_stale_build_lock(build_dir: Path, *, now: float | None = None) -> bool:
    """Remove the build lock a killed process left behind; True if there was one.

    torch's builder waits for its ``lock`` file to disappear, forever: without this, a server
    stopped during its first kernel build would hang every later start.
    """
    lock = build_dir / "lock"
    try:
        age = (time.time() if now is None else now) - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_SECONDS:
        return False
    log.warning("removing a stale kernel build lock (%.0f s old): %s", age, lock)
    lock.unlink(missing_ok=True)
    return True

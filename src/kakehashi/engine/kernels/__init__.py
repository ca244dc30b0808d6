"""Our own CPU kernels for bfloat16 decode (AVX-512 BF16), compiled on first use.

The C++ sources next to this file are built with torch's extension builder the first time a
bfloat16 model is loaded on a CPU that has AVX-512 BF16 (about 15 s), then cached on disk by
source and torch version. Where it cannot be built (no compiler, another CPU, or
``KAKEHASHI_CPU_KERNELS=0``) the model runs on torch's own kernels, with the same results up
to float rounding.

Once loaded the ops are ``torch.ops.kakehashi.*``:

- ``linear(x, weight, bias)``: ``x @ weight.T + bias`` for a few rows (decode).
- ``amx_pack(weight)``, ``amx_linear(x, packed, n, k, bias)``: the same on AMX tiles, for
  decode batches of up to a few dozen rows.
- ``rms_norm(x, weight, eps)``: Hugging Face's RMSNorm.
- ``paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)``: one
  query token per sequence against its paged keys and values.
- ``rotary_``, ``silu_mul``, ``add_rms_norm_``: the small steps between them, fused.
- ``argmax_rows(x)``: ``torch.argmax(x, -1)`` for float32 or bfloat16 logits.
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
import sys
import time
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
DISABLE_ENV = "KAKEHASHI_CPU_KERNELS"


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


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(x, dim=-1)`` for 2-D float32 or bfloat16 CPU logits; our kernel once it
    is loaded (by a bfloat16 model), torch's otherwise."""
    kernel_dtype = x.dtype in (torch.float32, torch.bfloat16)
    if _loaded and x.device.type == "cpu" and kernel_dtype and x.dim() == 2:
        return torch.ops.kakehashi.argmax_rows(x)
    return torch.argmax(x, dim=-1)


_loaded = False


@functools.cache
def bf16_kernels_available() -> bool:
    """Build (or find in the cache) and load the kernels; False where they cannot run."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if not cpu_supports_bf16_kernels():
        return False
    try:
        _build_and_load()
    except Exception as exc:  # a failed build only costs speed, never correctness
        log.warning(
            "CPU kernels unavailable, using torch's own (%s; %s=0 skips the build)",
            str(exc).splitlines()[0],
            DISABLE_ENV,
        )
        log.debug("kernel build failure", exc_info=True)
        return False
    global _loaded
    _loaded = True
    return True


def _build_and_load() -> None:
    from torch.utils import cpp_extension

    _put_ninja_on_path()
    source = b"".join(path.read_bytes() for path in (*_SOURCES, *_HEADERS))
    digest = hashlib.sha256(source + torch.__version__.encode() + " ".join(_FLAGS).encode())
    name = f"kakehashi_cpu_kernels_{digest.hexdigest()[:12]}"
    build_dir = Path(platformdirs.user_cache_dir("kakehashi")) / "kernels" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_build_lock(build_dir)
    if not (build_dir / f"{name}.so").exists():
        log.info("building kakehashi's CPU kernels (once, about 30 s)")
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


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` wheel may only be in our venv."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # type: ignore[import-untyped]
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")

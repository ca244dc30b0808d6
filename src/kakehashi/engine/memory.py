"""Memory and device policy: how big the KV cache is by default, and whether a model may
keep packed copies of its weights."""

from __future__ import annotations

import logging

import torch

from kakehashi.engine.models.base import CausalLM

log = logging.getLogger(__name__)

# Default KV budget when neither a block count nor a byte budget is given: at most this, and
# at most DEFAULT_KV_CACHE_RAM_FRACTION of the memory available when the engine starts.
DEFAULT_KV_CACHE_BYTES = 2 * 1024**3
DEFAULT_KV_CACHE_RAM_FRACTION = 0.4
DEFAULT_KV_CACHE_GPU_FRACTION = 0.8


def available_memory_bytes() -> int | None:
    """Memory the system can still hand out (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# Free memory to leave after packed weight copies: the KV cache and the server need room too.
PACK_HEADROOM_BYTES = 2 * 1024**3


def room_for_packed_weights(weight_bytes: int, free: int | None) -> bool:
    """Whether a second, matmul-friendly copy of ``weight_bytes`` of weights fits in ``free``
    bytes of free memory with :data:`PACK_HEADROOM_BYTES` to spare (True when unknown)."""
    return free is None or free >= weight_bytes + PACK_HEADROOM_BYTES


def default_kv_cache_bytes(device: torch.device | None = None) -> int:
    """The KV budget used when none is configured for a model on ``device`` (default: CPU).

    On a CPU: :data:`DEFAULT_KV_CACHE_BYTES`, at most :data:`DEFAULT_KV_CACHE_RAM_FRACTION` of
    the available RAM. On a GPU: :data:`DEFAULT_KV_CACHE_GPU_FRACTION` of its free memory
    once the weights are loaded (the GPU is the model's own; the rest is for activations).
    """
    if device is not None and device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_KV_CACHE_GPU_FRACTION)
    free = available_memory_bytes()
    if free is None:
        return DEFAULT_KV_CACHE_BYTES
    return min(DEFAULT_KV_CACHE_BYTES, int(free * DEFAULT_KV_CACHE_RAM_FRACTION))


def packed_copy_fits(model: CausalLM) -> bool:
    """Whether the model may keep packed copies of its weights; warns when memory is short."""
    params = getattr(model, "parameters", None)
    weight_bytes = sum(p.numel() * p.element_size() for p in params()) if params else 0
    free = available_memory_bytes()
    if room_for_packed_weights(weight_bytes, free):
        return True
    log.warning(
        "not packing weights for batched matmuls: a packed copy needs %.1f GiB and %.1f GiB "
        "is free (decode batches run on the plain weights, more slowly)",
        weight_bytes / 2**30,
        (free or 0) / 2**30,
    )
    return False


def model_dtype(model: CausalLM) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 if it has none)."""
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def model_device(model: CausalLM) -> torch.device:
    """The device the model's weights are on."""
    params = getattr(model, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")

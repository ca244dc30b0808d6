"""The workload every system runs, so that their figures compare like with like.

Pure Python (no torch, no numpy): the llama.cpp worker imports it inside its own venv.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

THREADS = 2  # the machine's cores; every system gets the same number


@dataclass(frozen=True, slots=True)
class Workload:
    """Lengths and batch sizes of one benchmark run."""

    prefill_tokens: int = 512  # prompt length of the prefill measurement
    prefill_repeats: int = 3  # the median is reported
    decode_prompt_tokens: int = 32  # prompt before the decode measurements
    decode_tokens: int = 128  # decode steps timed (after the first token)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    # Each batch size is decoded this many times, on fresh prompts, and its fastest run is
    # reported, for every system alike: on a shared VM a neighbour only ever slows a run down
    # (memory bandwidth here moved between 10 and 23 GB/s within minutes).
    decode_repeats: int = 2
    check_tokens: int = 48  # prompt whose logits llama.cpp and transformers must agree on
    profile: bool = False  # kakehashi also profiles a few decode steps (torch.profiler)

    @classmethod
    def quick(cls) -> Workload:
        return cls(
            prefill_tokens=64,
            prefill_repeats=1,
            decode_tokens=8,
            batch_sizes=(1, 4),
            decode_repeats=1,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        raw = json.loads(text)
        raw["batch_sizes"] = tuple(raw["batch_sizes"])
        return cls(**raw)


def prompts(seed: int, count: int, length: int, vocab: int) -> list[list[int]]:
    """``count`` distinct random prompts (distinct so that no prefix cache can help)."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def decode_batches(workload: Workload, batch_size: int, vocab: int) -> list[list[list[int]]]:
    """The prompt sets of every decode run at ``batch_size``: distinct across runs, so that
    no run finds another's prompts in a prefix cache."""
    return [
        prompts(
            DECODE_SEED * 1000 + batch_size + 100_000 * run,
            batch_size,
            workload.decode_prompt_tokens,
            vocab,
        )
        for run in range(workload.decode_repeats)
    ]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is ``VmHWM``: ``ru_maxrss`` survives ``exec``, so a child process would
    report its parent's peak if that was higher.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write_result(path: Path, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


# Seeds of the prompt sets, shared so every system sees the same token ids.
PREFILL_SEED = 1
DECODE_SEED = 2
CHECK_SEED = 3
WARMUP_SEED = 4


def parse_child_args(description: str) -> tuple[Path, Workload, Path]:
    """The command line every measuring child process takes: model dir, workload, output."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--workload", required=True, help="Workload as JSON")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args()
    return args.model_dir, Workload.from_json(args.workload), args.out


def tokenizer_size(model_dir: Path) -> int:
    """Number of ids the checkpoint's tokenizer knows; prompts draw from these.

    The embedding is larger (padded, as in real checkpoints); llama.cpp fills the rest of its
    token list with unused entries.
    """
    raw = json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    ids = list(raw["model"]["vocab"].values()) + [t["id"] for t in raw.get("added_tokens", [])]
    return max(ids) + 1


def describe_failure(exc: subprocess.CalledProcessError) -> str:
    """A one-line account of a failed child process."""
    command = " ".join(str(part) for part in exc.cmd[1:4])
    code = exc.returncode
    how = f"died with signal {-code}" if code < 0 else f"exited with status {code}"
    return f"`{command} ...` {how} (its output is above)"

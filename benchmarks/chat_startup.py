"""Time from `kakehashi chat` to its first prompt, against the floors it stands on.

Each command runs in a pseudo-terminal (pexpect) until prompt_toolkit draws its "> " prompt,
then gets Ctrl-D. The rows are interleaved, run after run, so the VM's noise falls on all of
them alike:

* ``python -c pass``: the interpreter alone;
* ``prompt_toolkit``: a bare prompt_toolkit prompt, the floor of any line editor in Python;
* ``openai + prompt_toolkit``: the same after ``import openai``, what the prompt would cost if
  the SDK were loaded first;
* ``kakehashi chat``: the real command (its server unreachable: nothing is asked of it before
  the first prompt).

    python benchmarks/chat_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import pexpect

PROMPT = r"\x1b\[\?2004h[^>]*>(?: |\x08\x1b\[\d+C)"
BARE = "from prompt_toolkit import prompt; prompt('> ')"


def first_prompt(argv: list[str], env: dict[str, str], prompt: str | None) -> float:
    """Seconds from spawning ``argv`` to its first prompt (or its exit, without one)."""
    started = time.perf_counter()
    child = pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", timeout=30)
    child.expect(prompt if prompt else pexpect.EOF)
    elapsed = time.perf_counter() - started
    if prompt:
        child.sendeof()
        child.expect(pexpect.EOF)
    child.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    python = sys.executable
    kakehashi = os.path.join(os.path.dirname(python), "kakehashi")
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ,
            "KAKEHASHI_BASE_URL": "http://127.0.0.1:9/v1",
            "KAKEHASHI_DATA_DIR": data,
            "PROMPT_TOOLKIT_NO_CPR": "1",
            "TERM": "xterm",
        }
        rows: dict[str, tuple[list[str], str | None]] = {
            "python -c pass": ([python, "-c", "pass"], None),
            "prompt_toolkit": ([python, "-c", BARE], PROMPT),
            "openai + prompt_toolkit": ([python, "-c", "import openai; " + BARE], PROMPT),
            "kakehashi chat": ([kakehashi, "chat", "--no-log"], PROMPT),
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        for argv, prompt in rows.values():  # warm the page cache
            first_prompt(argv, env, prompt)
        for _ in range(args.runs):
            for name, (argv, prompt) in rows.items():
                times[name].append(first_prompt(argv, env, prompt))
    floor = statistics.median(times["prompt_toolkit"])
    print(f"time to the first prompt, {args.runs} interleaved runs (ms)")
    print(f"{'command':<26}{'median':>8}{'p90':>8}{'min':>8}{'vs prompt_toolkit':>19}")
    for name, samples in times.items():
        samples.sort()
        median = statistics.median(samples)
        p90 = samples[int(0.9 * (len(samples) - 1))]
        print(
            f"{name:<26}{median * 1000:8.0f}{p90 * 1000:8.0f}{samples[0] * 1000:8.0f}"
            f"{median / floor:18.2f}x"
        )


if __name__ == "__main__":
    main()

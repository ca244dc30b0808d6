"""The gateway's cost: requests/s and added latency of kakehashi in front of a fast fake
upstream, against the same upstream called directly and against LiteLLM's proxy in front of it,
in one run on loopback, at each concurrency, streamed and not.

::

    .venv/bin/python benchmarks/gateway.py                    # 5 s per cell, c = 1, 16, 64
    .venv/bin/python benchmarks/gateway.py --soak 300         # then 5 minutes of load: RSS
    .venv/bin/python benchmarks/gateway.py --no-litellm

LiteLLM is installed by this script into its own virtualenv under the cache directory
(``~/.cache/kakehashi/bench/litellm-venv``), never into the project's. The upstream is
``tests/support/fake_upstream.py`` (16 chunks a stream, no delay). The load generator is one
aiohttp session in this process (an httpx client cost about 0.5 ms of CPU a request and capped
even the bare upstream near 400 req/s); every system is measured with the same one, so its own
cost weighs on all alike. Figures on this shared 2-core VM are noisy: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import platformdirs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.server import free_port, run_fake_upstream, run_process  # noqa: E402

MODEL = "bench-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
KEY = "sk-bench-5f0c2a9e7d4b4c1f8e3a6b2d9c0e7f14"
"""Both gateways check this key on every request (LiteLLM refuses to start without one)."""
TARGET_ADDED_P50_MS = 1.0
TARGET_LITELLM_RATIO = 15.0


@dataclass(frozen=True, slots=True)
class Cell:
    """One measured (system, concurrency, streamed) cell."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


async def _one(session: aiohttp.ClientSession, url: str, stream: bool) -> bool:
    async with session.post(url, json={**BODY, "stream": stream}) as response:
        data = await response.read()
    if not stream:
        return response.status == 200 and b'"choices"' in data
    return response.status == 200 and data.endswith(b"data: [DONE]\n\n")


async def _load(base_url: str, concurrency: int, stream: bool, seconds: float) -> Cell:
    url = f"{base_url}/chat/completions"
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as client:
        for _ in range(min(concurrency, 8)):  # warm the connections and the code paths
            await _one(client, url, stream)
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    ok = await _one(client, url, stream)
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Cell(
        rps=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=p99 * 1000,
        errors=errors,
        requests=len(latencies),
    )


def measure(base_url: str, concurrency: int, stream: bool, seconds: float) -> Cell:
    return asyncio.run(_load(base_url, concurrency, stream, seconds))


@contextlib.contextmanager
def kakehashi_gateway(
    upstream_url: str, work: Path, *, platform: bool = True
) -> Iterator[tuple[str, int]]:
    """kakehashi with no model of its own, forwarding ``bench-*`` to the upstream; with the
    platform (SQLite key store, in-process limiter, usage ledger) unless ``platform`` is off."""
    config = work / "kakehashi.toml"
    config.write_text(
        f"platform = {str(platform).lower()}\n"
        f'[[upstreams]]\nname = "fake"\nbase_url = "{upstream_url}/v1"\nmodels = ["bench-*"]\n'
    )
    port = free_port()
    argv = [sys.executable, "-m", "kakehashi.cli.main", "serve", "--no-local-model"]
    argv += ["--no-embeddings", "--config", str(config), "--port", str(port)]
    argv += ["--log-level", "warning", "--api-key", KEY]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKEHASHI_")}
    env["KAKEHASHI_DATA_DIR"] = str(work / "data")
    env.pop("OPENAI_API_KEY", None)
    with run_process(argv, port=port, env=env) as running:
        yield f"{running.root_url}/v1", running.process.pid


def litellm_venv() -> Path:
    """LiteLLM's proxy in its own virtualenv under the cache directory (installed once)."""
    venv = Path(platformdirs.user_cache_dir("kakehashi")) / "bench" / "litellm-venv"
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        print(f"installing LiteLLM's proxy into {venv} (once; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "litellm[proxy]"], check=True)
    return binary


@contextlib.contextmanager
def litellm_proxy(upstream_url: str, work: Path) -> Iterator[tuple[str, int]]:
    binary = litellm_venv()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: sk-fake\n"
        "general_settings:\n"
        f"  master_key: {KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "KAKEHASHI_"))}
    env["LITELLM_LOG"] = "ERROR"
    argv = [str(binary), "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    with run_process(
        argv, port=port, env=env, health_path="/health/liveliness", startup_timeout=180
    ) as running:
        yield f"{running.root_url}/v1", running.process.pid


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def soak(base_url: str, pid: int, seconds: float) -> list[tuple[float, float]]:
    """RSS of ``pid`` sampled every 30 s under concurrency-16 load, streamed and not."""
    samples = [(0.0, rss_mib(pid))]
    began = time.monotonic()
    stream = False
    while time.monotonic() - began < seconds:
        measure(base_url, 16, stream, min(30.0, seconds - (time.monotonic() - began)))
        stream = not stream
        samples.append((time.monotonic() - began, rss_mib(pid)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description="kakehashi's gateway against LiteLLM's proxy.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Load per cell.")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument(
        "--no-platform",
        action="store_true",
        help="kakehashi without keys in its database, limits and the usage ledger.",
    )
    parser.add_argument("--soak", type=float, default=0.0, help="Seconds of soak for RSS.")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[str, int, bool], Cell] = {}
    with (
        tempfile.TemporaryDirectory(prefix="kakehashi-bench-") as tmp,
        run_fake_upstream("bench", chunks=16) as upstream,
    ):
        work = Path(tmp)
        systems: list[tuple[str, contextlib.AbstractContextManager[tuple[str, int]] | None]] = [
            ("upstream", None),
            (
                "kakehashi",
                kakehashi_gateway(upstream.root_url, work, platform=not args.no_platform),
            ),
        ]
        if not args.no_litellm:
            systems.append(("litellm", litellm_proxy(upstream.root_url, work)))
        for name, manager in systems:
            with manager or contextlib.nullcontext((f"{upstream.root_url}/v1", 0)) as (url, pid):
                for stream in (False, True):
                    for concurrency in levels:
                        cell = measure(url, concurrency, stream, args.seconds)
                        results[(name, concurrency, stream)] = cell
                        kind = "stream" if stream else "whole "
                        print(
                            f"{name:10} {kind} c={concurrency:<3} {cell.rps:8.1f} req/s  "
                            f"p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  "
                            f"errors {cell.errors}/{cell.requests}",
                            flush=True,
                        )
                if name == "kakehashi" and args.soak:
                    samples = soak(url, pid, args.soak)
                    print(
                        "kakehashi RSS under load (s, MiB): "
                        + ", ".join(f"{t:.0f}:{m:.1f}" for t, m in samples)
                    )
                    growth = samples[-1][1] - samples[1][1] if len(samples) > 2 else 0.0
                    print(f"RSS growth after the first 30 s: {growth:+.1f} MiB")
    print(f"\nkakehashi ran with the platform {'off' if args.no_platform else 'on (SQLite)'}")
    report(results, levels, litellm=not args.no_litellm)


def report(results: dict[tuple[str, int, bool], Cell], levels: list[int], litellm: bool) -> None:
    print("\nadded latency (system p50 - upstream p50) and throughput ratios")
    for stream in (False, True):
        kind = "streamed" if stream else "whole"
        for concurrency in levels:
            ours = results[("kakehashi", concurrency, stream)]
            direct = results[("upstream", concurrency, stream)]
            line = (
                f"  {kind:8} c={concurrency:<3} kakehashi adds {ours.p50_ms - direct.p50_ms:6.2f} "
                f"ms p50, {ours.p99_ms - direct.p99_ms:7.2f} ms p99"
            )
            if litellm:
                theirs = results[("litellm", concurrency, stream)]
                line += (
                    f"; LiteLLM adds {theirs.p50_ms - direct.p50_ms:7.2f} ms p50; "
                    f"kakehashi/LiteLLM req/s {ours.rps / theirs.rps:5.1f}x"
                )
            print(line)
    print("\ntargets")
    for stream in (False, True):
        kind = "streamed" if stream else "whole"
        ours = results[("kakehashi", levels[0], stream)]
        added = ours.p50_ms - results[("upstream", levels[0], stream)].p50_ms
        verdict = "met" if added <= TARGET_ADDED_P50_MS else "MISSED"
        print(f"  {kind}: added p50 at c={levels[0]} {added:.2f} ms <= 1 ms: {verdict}")
        if litellm:
            top = levels[-1]
            ratio = results[("kakehashi", top, stream)].rps / results[("litellm", top, stream)].rps
            verdict = "met" if ratio >= TARGET_LITELLM_RATIO else "MISSED"
            print(f"  {kind}: req/s at c={top} {ratio:.1f}x LiteLLM >= 15x: {verdict}")
    errors = sum(c.errors for c in results.values())
    print(f"  errors: {errors} (target 0): {'met' if errors == 0 else 'MISSED'}")
    if shutil.which("nproc"):
        print(f"  (machine: {os.cpu_count()} cores, shared)")


if __name__ == "__main__":
    main()

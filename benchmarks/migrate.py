"""`kakehashi migrate` on a 10,000-line tree, against parsing the same tree.

The tree is written to a temporary directory: the golden "before" files of the migrate tests
(seed-style code for openai 0.28), copied with their names varied, and as many lines again of
ordinary code that needs nothing, as a real project mixes them. Rows, in one run:

* ``ast.parse``: Python's own parser on every file (the floor of reading the code);
* ``libcst parse``: the concrete syntax tree migrate works on, without the rewrite;
* ``migrate (in process)``: :func:`kakehashi.client.migrate.migrate_paths`, every diff made;
* ``kakehashi migrate`` (the command, a process, printing the diff).

    python benchmarks/migrate.py [--lines 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import libcst

from kakehashi.client.migrate import migrate_paths, python_files

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "migrate"
PLAIN = '''
def total_{n}(rows, key="amount"):
    """Add up one column of a table of dicts."""
    result = 0
    for row in rows:
        value = row.get(key, 0)
        if isinstance(value, (int, float)):
            result += value
    return {{"key": key, "total": result, "rows": len(rows)}}
'''


def write_tree(root: Path, lines: int) -> tuple[int, int]:
    """Files of about ``lines`` lines under ``root``; (files, lines) written."""
    sources = [p.read_text() for p in sorted(CASES.glob("*.before.py"))]
    written = files = 0
    index = 0
    while written < lines:
        package = root / f"pkg{index // 20}"
        package.mkdir(exist_ok=True)
        if index % 2 == 0:
            text = sources[(index // 2) % len(sources)].replace("send_message", f"send_{index}")
        else:
            text = "".join(PLAIN.format(n=n) for n in range(index * 10, index * 10 + 10))
        (package / f"module_{index}.py").write_text(text)
        written += text.count("\n")
        files += 1
        index += 1
    return files, written


def timed(run: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        files, lines = write_tree(root, args.lines)
        paths = list(python_files([root]))
        texts = [p.read_text() for p in paths]
        changed = sum(result.changed for result in migrate_paths([root]))
        command = [sys.executable, "-m", "kakehashi.cli.main", "migrate", str(root)]
        rows = {
            "ast.parse": lambda: [ast.parse(t) for t in texts],
            "libcst parse": lambda: [libcst.parse_module(t) for t in texts],
            "migrate (in process)": lambda: [r.diff() for r in migrate_paths([root])],
            "kakehashi migrate": lambda: subprocess.run(command, capture_output=True, check=True),
        }
        figures = {name: timed(run, args.runs) for name, run in rows.items()}
    print(f"{lines} lines in {files} files ({changed} to rewrite), median of {args.runs} runs")
    base = figures["libcst parse"]
    print(f"{'step':<24}{'seconds':>9}{'lines/s':>10}{'vs libcst parse':>17}")
    for name, seconds in figures.items():
        print(f"{name:<24}{seconds:9.2f}{lines / seconds:10.0f}{seconds / base:16.2f}x")


if __name__ == "__main__":
    main()

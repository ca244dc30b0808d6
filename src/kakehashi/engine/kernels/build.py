"""``python -m kakehashi.engine.kernels.build BUILD_DIR NAME``: compile the CPU kernels.

Run by :func:`kakehashi.engine.kernels.resolve_kernels` in a child process, with the ninja
wheel's directory on the child's PATH only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kakehashi.engine.kernels import compile_into


def main() -> None:
    build_dir, name = sys.argv[1:3]
    compile_into(Path(build_dir), name)


if __name__ == "__main__":
    main()

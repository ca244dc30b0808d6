"""``kakehashi serve`` with a --model that is a directory but not a model exits with one clean
line, as other bad --model values do (issue 14, defect 12)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.server import free_port, server_command, server_env


@pytest.mark.parametrize("kind", ["/etc", "empty"])
def test_a_directory_that_is_not_a_model_is_a_clean_error(
    kind: str, tmp_path: Path, server_data_dir: Path
) -> None:
    model = Path("/etc") if kind == "/etc" else tmp_path
    if not model.is_dir():
        pytest.skip("no /etc on this system")
    result = subprocess.run(
        server_command("serve", "--model", str(model), "--port", str(free_port())),
        env=server_env(server_data_dir, {"COLUMNS": "400"}),  # no wrapping of the message
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, output
    assert "without config.json" in output and str(model) in output

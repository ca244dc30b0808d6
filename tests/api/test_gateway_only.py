"""A gateway-only server (no local model) is built without importing torch: it starts fast
and small on a machine that only forwards to upstream providers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_an_app_without_a_local_model_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from kakehashi.settings import Settings\n"
        "from kakehashi.api.app import create_app\n"
        f"app = create_app(Settings(local_model=False, data_dir={str(tmp_path)!r}))\n"
        "ids = [e.id for e in app.state.service.catalog.entries()]\n"
        "print(json.dumps(['torch' in sys.modules, ids[:1]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    torch_loaded, some_ids = json.loads(result.stdout)
    assert torch_loaded is False
    assert some_ids  # the catalog was built (embeddings and built-in names)

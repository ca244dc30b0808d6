"""What ``kakehashi chat`` loads before its first prompt: not torch, FastAPI, the engine, the
settings machinery or the openai SDK (built in a thread once the prompt is up), so that the
prompt comes up fast (benchmarks/chat_startup.py measures it)."""

from __future__ import annotations

import json
import subprocess
import sys

KEPT_OUT = ("torch", "fastapi", "openai", "pydantic_settings", "rich.markdown")
# `serve --help` names the default model, whose constants live in a standard-library-only leaf.
ENGINE_LEAVES = {
    "kakehashi.engine",
    "kakehashi.engine.models",
    "kakehashi.engine.models.default_model",
}


def test_the_command_line_and_the_repl_load_light() -> None:
    code = (
        "import json, sys\n"
        "import kakehashi.cli.main, kakehashi.cli.chat, kakehashi.client, kakehashi.client.log\n"
        "import prompt_toolkit\n"
        f"loaded = [m for m in {KEPT_OUT!r} if m in sys.modules]\n"
        "loaded += [m for m in sys.modules if m.startswith('kakehashi.engine')]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert set(json.loads(result.stdout)) <= ENGINE_LEAVES


def test_client_names_load_on_first_use() -> None:
    import kakehashi.client as client

    assert set(client.__all__) == {
        "PROVIDERS",
        "AuthenticationFailed",
        "ChatUsage",
        "Chatbot",
        "ClientError",
        "ConnectionFailed",
        "ContextWindowExceeded",
        "ModelNotFound",
        "Provider",
        "TokenProbability",
        "Trim",
        "Usage",
        "resolve",
    }
    for name in client.__all__:
        assert getattr(client, name) is not None

"""``kakehashi models``: the catalog with each model's status and the caller's access."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kakehashi.cli.main import app

runner = CliRunner()

CONFIG = """
[[keys]]
key = "sk-free-key-1"
tier = "free"

[[models]]
id = "gpt-4"
min_tier = "tier-1"
input_price = 30.0
output_price = 60.0
"""


def rows(*args: str) -> dict[str, dict]:
    result = runner.invoke(app, ["models", "--json", *args])
    assert result.exit_code == 0, result.output
    return {row["id"]: row for row in map(json.loads, result.output.splitlines())}


def test_status_and_access(tmp_path: Path) -> None:
    config = tmp_path / "kakehashi.toml"
    config.write_text(CONFIG)
    during = rows("--config", str(config), "--now", "2023-12-01")
    assert during["text-davinci-003"]["status"] == (
        "deprecated until 2024-01-04 → gpt-3.5-turbo-instruct"
    )
    assert during["smollm2-135m-instruct"]["status"] == "active"
    assert during["text-embedding-ada-002"]["serves"] == "all-MiniLM-L6-v2"
    assert during["gpt-4"]["access"] == "yes"  # no key given: the operator's view
    assert during["gpt-4"]["serves"] == "smollm2-135m-instruct"
    # OpenAI's current names are answered by the default model too, and say so.
    for name in ("gpt-3.5-turbo", "gpt-4o", "gpt-4.1", "chatgpt-4o-latest"):
        assert during[name]["serves"] == "smollm2-135m-instruct"
        assert during[name]["capabilities"] == ["chat"] and during[name]["status"] == "active"

    after = rows("--config", str(config), "--now", "2024-01-04", "--key", "sk-free-key-1")
    assert after["text-davinci-003"]["status"] == "retired → gpt-3.5-turbo-instruct"
    assert after["text-davinci-003"]["retired"] is True
    assert after["text-davinci-edit-001"]["status"] == "deprecated → gpt-4"
    assert after["gpt-4"]["access"].startswith("no (tiers: tier-1, tier-2")
    assert after["smollm2-135m-instruct"]["access"] == "yes"


def test_table_and_bad_key(tmp_path: Path) -> None:
    table = runner.invoke(app, ["models", "--now", "2024-01-04"])
    assert table.exit_code == 0, table.output
    assert "retired → babbage-002" in table.output and "smollm2-135m-instruct" in table.output
    bad = runner.invoke(app, ["models", "--key", "sk-unknown"])
    assert bad.exit_code == 1 and "not one of the configured keys" in bad.output
    broken = tmp_path / "broken.toml"
    broken.write_text('[[models]]\nid = "x"\nserves = "nowhere"\n')
    result = runner.invoke(app, ["models", "--config", str(broken)])
    assert result.exit_code == 1 and "nowhere" in result.output


def test_serve_has_the_new_flags() -> None:
    result = runner.invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--config", "--no-embeddings", "--embedding-model", "--now", "KEY:TIER"):
        assert flag in result.output

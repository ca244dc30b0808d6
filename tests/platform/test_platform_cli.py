"""``kakehashi keys`` and ``kakehashi usage`` on SQLite and PostgreSQL, good input and bad."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from platform_records import usage
from typer.testing import CliRunner

from kakehashi.cli.main import app
from kakehashi.platform.keys import DatabaseKeyStore, KeyRepository
from kakehashi.platform.ledger import LedgerSink
from kakehashi.platform.storage.db import Database

runner = CliRunner()


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"KAKEHASHI_DATA_DIR": str(tmp_path), "KAKEHASHI_DATABASE_URL": database_url}


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_key_lifecycle(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = run(
        env, "keys", "create", "--name", "team-a", "--tier", "tier-1", "--models", "gpt-4, m2",
        "--rpm", "60", "--tpm", "1000", "--budget-usd", "2.5", "--expires", "30d",
    )  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("sk-kh-") and "\n" not in secret
    assert "not shown again" in err

    code, out, _ = run(env, "keys", "list", "--json")
    assert code == 0
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert secret not in out
    assert listed["name"] == "team-a" and listed["status"] == "active"
    assert listed["models"] == ["gpt-4", "m2"] and listed["budget_usd"] == 2.5
    assert listed["redacted_value"] == f"{secret[:8]}...{secret[-4:]}"
    code, table, _ = run(env, "keys", "list")
    assert code == 0 and listed["id"] in table and secret not in table

    db = Database.open(env["KAKEHASHI_DATABASE_URL"], tmp_path)
    try:
        store = DatabaseKeyStore(KeyRepository(db), cache_seconds=0)

        async def check() -> bool:
            return await store.authenticate(secret) is not None

        assert asyncio.run(check())
        code, _, err = run(env, "keys", "revoke", listed["id"])
        assert code == 0 and "revoked" in err
        assert not asyncio.run(check())
    finally:
        db.close()
    _, out, _ = run(env, "keys", "list", "--json")
    assert json.loads(out)["status"] == "revoked"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["keys", "create"], "Missing option '--name'"),
        (["keys", "create", "--name", "k", "--rpm", "0"], "--rpm"),
        (["keys", "create", "--name", "k", "--rpm", "many"], "--rpm"),
        (["keys", "create", "--name", "k", "--tier", "gold"], "Unknown tier 'gold'"),
        (["keys", "create", "--name", "k", "--models", ","], "--models"),
        (["keys", "create", "--name", "k", "--budget-usd", "-1"], "--budget-usd"),
        (["keys", "create", "--name", "k", "--expires", "2001-01-01"], "in the future"),
        (["keys", "create", "--name", "k", "--expires", "soon"], "is not a date"),
        (["keys", "create", "--name", " "], "--name"),
        (["usage", "--by", "colour"], "--by"),
        (["usage", "--since", "last tuesday"], "is not a date"),
    ],
)
def test_bad_input_is_named_and_changes_nothing(
    env: dict[str, str], args: list[str], problem: str
) -> None:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert problem in " ".join(result.output.split())
    _, out, _ = run(env, "keys", "list", "--json")
    assert out == ""


def test_revoking_an_unknown_key_and_an_unreachable_database(env: dict[str, str]) -> None:
    code, _, err = run(env, "keys", "revoke", "key_nope")
    assert code == 1 and "no key with id 'key_nope'" in err
    down = {**env, "KAKEHASHI_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}
    code, _, err = run(down, "keys", "list")
    assert code == 1 and "cannot use the database" in err and "Traceback" not in err
    odd = {**env, "KAKEHASHI_DATABASE_URL": "mysql://u@h/db"}
    code, _, err = run(odd, "keys", "list")
    assert code == 1 and "unsupported database 'mysql'" in err


def test_usage_table(env: dict[str, str], tmp_path: Path) -> None:
    db = Database.open(env["KAKEHASHI_DATABASE_URL"], tmp_path)
    sink = LedgerSink(db, prices=lambda _m: None)
    sink.start()
    for n in range(3):
        sink.record(usage(n, model="gpt-4", started_at=1_750_000_000.0 + n, cost_usd=0.5))
    sink.record(usage(9, model="small", started_at=1_750_000_000.0, status="error"))
    sink.close()
    db.close()
    code, out, _ = run(env, "usage", "--by", "model", "--since", "2025-06-01", "--json")
    assert code == 0
    rows = {r["group"]: r for r in map(json.loads, out.splitlines())}
    assert rows["gpt-4"]["requests"] == 3 and rows["gpt-4"]["cost_usd"] == 1.5
    assert rows["small"]["errors"] == 1
    code, out, _ = run(env, "usage", "--by", "day", "--since", "2025-06-01")
    assert code == 0 and "2025-06-15" in out and "$1.5000" in out
    code, out, _ = run(env, "usage", "--since", "1d")
    assert code == 0 and "no usage recorded" in out

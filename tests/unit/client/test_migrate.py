"""``kakehashi migrate``: golden before/after files, what must not change, and the command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kakehashi.cli.main import app
from kakehashi.client.migrate import migrate_paths, migrate_source, python_files

CASES = Path(__file__).parents[2] / "data" / "migrate"
NAMES = sorted(p.name.removesuffix(".before.py") for p in CASES.glob("*.before.py"))
runner = CliRunner()


@pytest.mark.parametrize("name", NAMES)
def test_golden_files(name: str) -> None:
    before = (CASES / f"{name}.before.py").read_text()
    after = (CASES / f"{name}.after.py").read_text()
    assert migrate_source(before)[0] == after
    assert migrate_source(after)[0] == after  # migrated code stays as it is


def test_cases_cover_the_seeds() -> None:
    assert {"davinci_codex_repl", "chat_completion_repl", "requests_function"} <= set(NAMES)


@pytest.mark.parametrize(
    "code",
    [
        "import json\nmessages = [{'role': 'user', 'content': 'x'}]\n"
        "print(messages[0]['content'])\n",
        "from openai import OpenAI\nclient = OpenAI()\nr = client.models.list()\n",
        "config = {'model': 'gpt-4o'}\ndef f(model='text-embedding-3-small'): ...\n",
        "ada = 'text-davinci-003'  # not a model setting, left alone\n",
    ],
)
def test_code_that_needs_nothing_is_left_alone(code: str) -> None:
    assert migrate_source(code) == (code, [])


def test_dicts_that_are_not_responses_keep_their_subscripts() -> None:
    code = (
        "import openai\n"
        "history = [{'role': 'user', 'content': 'hi'}]\n"
        "reply = openai.ChatCompletion.create(model='m', messages=history)\n"
        "answer = {'role': 'assistant', 'content': reply['choices'][0]['message']['content']}\n"
        "history.append(answer)\n"
        "print(history[-1]['content'])\n"
    )
    migrated, _ = migrate_source(code)
    assert "reply.choices[0].message.content" in migrated
    assert "history[-1]['content']" in migrated
    assert migrated.startswith("from openai import OpenAI\nclient = OpenAI()\n")


def test_edits_and_names_already_taken() -> None:
    code = "import openai\nclient = 'mine'\nopenai.Edit.create(engine='text-davinci-edit-001')\n"
    migrated, notes = migrate_source(code)
    assert "openai_client = OpenAI()" in migrated
    assert "openai_client.chat.completions.create(model='gpt-4')" in migrated
    assert notes == ["the Edits API is gone: check the chat.completions call"]


def test_python_files_skips_environments(tmp_path: Path) -> None:
    for name in ("a.py", "pkg/b.py", ".venv/c.py", "venv/d.py", "pkg/notes.txt", ".git/e.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in python_files([tmp_path])]
    assert found == ["a.py", "pkg/b.py"]


def test_command_diff_then_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = CASES / "davinci_codex_repl.before.py"
    (tmp_path / "bot.py").write_text(source.read_text())
    (tmp_path / "clean.py").write_text("print('hi')\n")
    result = runner.invoke(app, ["migrate", "."])
    assert result.exit_code == 0, result.output
    assert "--- a/bot.py\n+++ b/bot.py\n" in result.stdout
    assert "-        engine='davinci-codex'" in result.stdout
    assert "+        model='gpt-3.5-turbo-instruct'" in result.stdout
    assert "would rewrite 1 of 2 Python files" in result.stderr
    assert (tmp_path / "bot.py").read_text() == source.read_text()  # --diff writes nothing
    result = runner.invoke(app, ["migrate", "bot.py", "--write"])
    assert result.exit_code == 0, result.output
    expected = (CASES / "davinci_codex_repl.after.py").read_text()
    assert (tmp_path / "bot.py").read_text() == expected
    assert runner.invoke(app, ["migrate", "."]).stdout == ""  # nothing left to do


def test_command_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["migrate", "nope.py"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "broken.py").write_text("def f(:\n")
    (tmp_path / "old.py").write_text("import openai\nopenai.api_key = 'k'\n")
    (tmp_path / "latin.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    result = runner.invoke(app, ["migrate", "."])
    assert result.exit_code == 1
    assert "broken.py: not valid Python: invalid syntax (line 1, column 7)" in result.stderr
    assert "latin.py: cannot read" in result.stderr
    assert "client = OpenAI(api_key='k')" in result.stdout  # the other files still migrate
    assert "would rewrite 1 of 3 Python files; 2 failed" in result.stderr
    empty = runner.invoke(app, ["migrate"])
    assert empty.exit_code == 2


def test_migrate_paths_reports_each_file(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import openai\nopenai.Model.list()\n")
    (result,) = migrate_paths([tmp_path])
    assert result.changed and result.after.endswith("client.models.list()\n")


def test_command_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.py").write_text("import openai\n")
    monkeypatch.setitem(sys.modules, "kakehashi.client.migrate", None)  # as if libcst were absent
    result = runner.invoke(app, ["migrate", str(tmp_path)])
    assert result.exit_code == 1
    assert "pip install 'kakehashi[migrate]'" in " ".join(result.stderr.split())

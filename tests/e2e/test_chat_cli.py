"""``kakehashi chat`` and ``kakehashi logs`` as a person uses them: the REPL driven through a
pseudo-terminal (pexpect) against a real server, piped input, the log, and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pexpect
import pytest

from e2e.common import API_KEY, LLAMA_MODEL
from support.server import ServerProcess

# A fresh prompt: prompt_toolkit turns bracketed paste on, then draws "> " (or moves the cursor
# over the space); it turns bracketed paste off once a line is accepted.
PROMPT = r"\x1b\[\?2004h[^>]*>(?: |\x08\x1b\[\d+C)"
ACCEPTED = r"\x1b\[\?2004l"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\x08\r]")
MAX_TOKENS = 10


@pytest.fixture
def env(llama_server: ServerProcess, tmp_path: Path) -> dict[str, str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("KAKEHASHI_")}
    variables.update(
        KAKEHASHI_BASE_URL=llama_server.base_url,
        KAKEHASHI_API_KEY=API_KEY,
        KAKEHASHI_DATA_DIR=str(tmp_path / "data"),
        PROMPT_TOOLKIT_NO_CPR="1",
        TERM="xterm-256color",
        COLUMNS="120",
    )
    return variables


def kakehashi(*args: str) -> list[str]:
    return [sys.executable, "-m", "kakehashi.cli.main", *args]


@pytest.fixture
def repl(env: dict[str, str], tmp_path: Path) -> Iterator[pexpect.spawn]:
    child = spawn(env, tmp_path, "--temperature", "0", "--max-tokens", str(MAX_TOKENS))
    yield child
    child.close(force=True)


def spawn(env: dict[str, str], cwd: Path, *args: str) -> pexpect.spawn:
    command = kakehashi("chat", *args)
    child = pexpect.spawn(
        command[0],
        command[1:],
        env=env,
        cwd=str(cwd),
        encoding="utf-8",
        dimensions=(50, 120),
        timeout=60,
    )
    child.expect(PROMPT)
    return child


def say(child: pexpect.spawn, line: str) -> str:
    """Type ``line``, wait for the next prompt; what was shown in between, without escapes."""
    child.sendline(line)
    child.expect(ACCEPTED)
    child.expect(PROMPT)
    return ANSI.sub("", child.before)


def expected_answer(server: ServerProcess, messages: list[dict[str, str]]) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY)
    response = client.chat.completions.create(
        model=LLAMA_MODEL,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    return response.choices[0].message.content or ""


def logs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kakehashi("logs", *args), env=env, capture_output=True, text=True, timeout=60
    )


def logged(env: dict[str, str]) -> list[dict]:
    result = logs(env, "--json", "-n", "100")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def shown(answer: str) -> str:
    """The longest run of letters of ``answer``: what survives markdown rendering."""
    return max(re.findall(r"[A-Za-z]+", answer) or [""], key=len)


def test_repl_commands_streaming_and_logprobs(
    repl: pexpect.spawn, env: dict[str, str], llama_server: ServerProcess, tmp_path: Path
) -> None:
    assert "/logprobs N" in say(repl, "/help")
    assert "system: Be brief." in say(repl, "/system Be brief.")
    screen = say(repl, "Hello there")
    answer = expected_answer(
        llama_server,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
    )
    assert shown(answer) in screen.replace("\n", "")
    assert "logprobs: on, 2 alternatives" in say(repl, "/logprobs 2")
    screen = say(repl, "Tell me more")
    assert "alternatives" in screen and re.search(r"'.*'\s+0\.\d{5}\s+0\.\d{5} '", screen)
    usage = say(repl, "/usage")
    assert "context window: 512 tokens (exact counts)" in usage
    assert re.search(r"this session: \d+ prompt \+ \d+ completion", usage)
    assert "temperature: 0.5" in say(repl, "/temperature 0.5")
    assert f"model: {LLAMA_MODEL}" in say(repl, "/model")
    saved = tmp_path / "saved.json"
    assert "saved to" in say(repl, f"/save {saved}")
    assert json.loads(saved.read_text())["messages"][0]["content"] == "Hello there"
    assert "new conversation" in say(repl, "/reset")
    assert "loaded 2 turns" in say(repl, f"/load {saved}")
    # bad input never ends the session
    assert "unknown command /frobnicate" in say(repl, "/frobnicate")
    assert "from 0 to 2" in say(repl, "/temperature hot")
    assert "takes 0 to 20" in say(repl, "/logprobs 99")
    assert "needs a file name" in say(repl, "/save")
    assert "Cannot read" in say(repl, f"/load {tmp_path}/nothing.json")
    (tmp_path / "notes.txt").write_text("just notes")
    assert "not a saved conversation" in say(repl, f"/load {tmp_path}/notes.txt")
    missing = say(repl, "/model no-such-model")
    assert "no-such-model" in missing
    assert "does not exist" in say(repl, "Hi again")
    repl.sendline("quit")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0
    prompts = [row["prompt"] for row in logged(env)]
    assert prompts == ["Hello there", "Tell me more"]
    assert logged(env)[0]["response"] == answer


def test_ctrl_d_leaves_and_continue_resumes_after_a_restart(
    env: dict[str, str], llama_server: ServerProcess, tmp_path: Path
) -> None:
    first = spawn(env, tmp_path, "--temperature", "0", "--max-tokens", str(MAX_TOKENS))
    say(first, "Where is the capital of Japan?")
    first.sendeof()
    first.expect(pexpect.EOF)
    first.close()
    assert first.exitstatus == 0

    again = spawn(env, tmp_path, "--continue", "--temperature", "0", "--max-tokens", "4")
    say(again, "And its population?")
    again.sendline("exit")
    again.expect(pexpect.EOF)
    rows = logged(env)
    assert [r["prompt"] for r in rows] == ["Where is the capital of Japan?", "And its population?"]
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"]
    history = [
        {"role": "user", "content": rows[0]["prompt"]},
        {"role": "assistant", "content": rows[0]["response"]},
        {"role": "user", "content": rows[1]["prompt"]},
    ]
    counted = openai.OpenAI(base_url=llama_server.base_url, api_key=API_KEY).post(
        "/tokenize", cast_to=object, body={"model": LLAMA_MODEL, "messages": history}
    )
    assert rows[1]["prompt_tokens"] == counted["count"]  # type: ignore[index]


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kakehashi(*args), env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_piped_question_prints_the_answer(env: dict[str, str], llama_server: ServerProcess) -> None:
    result = run(
        env,
        "chat",
        "-m",
        LLAMA_MODEL,
        "--temperature",
        "0",
        "--max-tokens",
        str(MAX_TOKENS),
        stdin="What is a bridge?\n",
    )
    assert result.returncode == 0, result.stderr
    expected = expected_answer(llama_server, [{"role": "user", "content": "What is a bridge?"}])
    assert result.stdout == expected + "\n"
    quiet = run(env, "chat", "--no-log", "--max-tokens", "2", "A question as an argument")
    assert quiet.returncode == 0, quiet.stderr
    assert [r["prompt"] for r in logged(env)] == ["What is a bridge?"]


def test_logs_list_search_and_show(env: dict[str, str]) -> None:
    for question in ("bridges of Kyoto", "rivers of Osaka", "bridges of Tokyo"):
        assert run(env, "chat", "--max-tokens", "2", question).returncode == 0
    listing = logs(env)
    assert listing.returncode == 0
    assert all(q in listing.stdout for q in ("bridges of Kyoto", "rivers of Osaka"))
    found = logs(env, "-q", "bridges", "--json")
    assert [json.loads(line)["prompt"] for line in found.stdout.splitlines()] == [
        "bridges of Kyoto",
        "bridges of Tokyo",
    ]
    assert len(logs(env, "-n", "1", "--json").stdout.splitlines()) == 1
    cid = json.loads(found.stdout.splitlines()[0])["conversation_id"]
    assert "bridges of Kyoto" in logs(env, "--cid", cid).stdout
    assert logs(env, "--path").stdout.strip().endswith("logs.db")
    assert (
        "no logged exchanges contain 'nothing like this'"
        in logs(env, "-q", "nothing like this").stdout
    )


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (("chat", "--temperature", "3", "hi"), "", 2, "--temperature"),
        (("chat", "--overflow", "forget", "hi"), "", 2, "must be drop or summarize"),
        (("chat", "--provider", "azure", "hi"), "", 1, "Unknown provider 'azure'"),
        (("chat", "-m", "gpt-4o", "hi"), "", 1, "OpenAI needs an API key"),
        (("chat", "-m", "no-such-model", "hi"), "", 1, "does not exist"),
        (("chat", "--base-url", "http://127.0.0.1:9/v1", "hi"), "", 1, "Could not reach"),
        (("chat",), "   \n", 2, "the prompt is empty"),
        (("chat", "--continue", "hi"), "", 1, "no logged conversation to continue"),
        (("chat", "--cid", "nope", "hi"), "", 1, "no logged conversation has the id 'nope'"),
        (("chat", "--no-log", "--continue", "hi"), "", 2, "read the log"),
        (("chat", "--logprobs", "21", "hi"), "", 2, "--logprobs"),
        (("logs", "-n", "0"), "", 2, "--count"),
        (("logs", "--cid", "nope"), "", 1, "no logged conversation has the id 'nope'"),
    ],
)
def test_bad_input(
    env: dict[str, str], args: tuple[str, ...], stdin: str, code: int, message: str
) -> None:
    env = {**env, "OPENAI_API_KEY": "", "COLUMNS": "200"}
    result = run(env, *args, stdin=stdin)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in re.sub(r"\s+", " ", ANSI.sub("", result.stderr + result.stdout))
    assert "Traceback" not in result.stderr

"""The Files and Batches APIs on a real server with the tiny Llama: the official SDK's whole
flow, raw HTTP with bad input on every route, ownership between keys, validation failures,
cancel mid-run, and the ledger rows of batch lines at the batch price."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from e2e.batching import batch_lines, ledger, wait_for
from e2e.common import LLAMA_ALIAS, LLAMA_MODEL, MAX_MODEL_LEN
from support.contract import sdk_http_client
from support.server import ServerProcess, run_server

KEY_A = "sk-batch-owner-a"
KEY_B = "sk-batch-owner-b"  # may use tiny-alias only
INPUT_PRICE, OUTPUT_PRICE = 2.0, 8.0  # USD per 1M tokens, for tiny-llama
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def batch_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch-server")


@pytest.fixture(scope="module")
def batch_server(tiny_llama_dir: Path, batch_data_dir: Path) -> Iterator[ServerProcess]:
    data_dir = batch_data_dir
    config = data_dir / "kakehashi.toml"
    config.write_text(
        f"""
[[keys]]
key = "{KEY_A}"
name = "owner-a"

[[keys]]
key = "{KEY_B}"
name = "owner-b"
models = ["{LLAMA_ALIAS}"]

[[models]]
id = "{LLAMA_MODEL}"
input_price = {INPUT_PRICE}
output_price = {OUTPUT_PRICE}
"""
    )
    with run_server(
        tiny_llama_dir,
        data_dir=data_dir,
        served_model_name=LLAMA_MODEL,
        aliases=[LLAMA_ALIAS],
        max_model_len=MAX_MODEL_LEN,
        # Below the uploads of these tests: the Files API has its own limit.
        env={"KAKEHASHI_CONFIG": str(config), "KAKEHASHI_MAX_BODY_SIZE": str(BODY_LIMIT)},
    ) as server:
        yield server


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url,
        api_key=key,
        max_retries=0,
        http_client=sdk_http_client(timeout=60),
    )


@pytest.fixture(scope="module")
def client_a(batch_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with sdk(batch_server, KEY_A) as client:
        yield client


@pytest.fixture(scope="module")
def client_b(batch_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with sdk(batch_server, KEY_B) as client:
        yield client


def test_the_sdk_flow_from_upload_to_output(client_a: openai.OpenAI, batch_data_dir: Path) -> None:
    uploaded = client_a.files.create(file=("in.jsonl", batch_lines(12)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(batch_lines(12))
    assert uploaded.expires_at == uploaded.created_at + 30 * 86_400
    created = client_a.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert created.status == "validating" and created.metadata == {"job": "nightly"}
    done = wait_for(client_a, created.id, "completed", "failed")
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (12, 12)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.error_file_id is None and done.output_file_id is not None
    content = client_a.files.content(done.output_file_id).text
    lines = [json.loads(line) for line in content.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{i}" for i in range(12))
    prompt = completion = 0
    for line in lines:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        assert response["body"]["object"] == "chat.completion"
        assert response["body"]["model"] == LLAMA_MODEL
        prompt += response["body"]["usage"]["prompt_tokens"]
        completion += response["body"]["usage"]["completion_tokens"]
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens) == (prompt, completion)
    # One ledger row per line, at half the catalog price.
    rows = ledger(batch_data_dir, created.id)
    assert len(rows) == 12 and len({r["request_id"] for r in rows}) == 12
    full_price = (prompt * INPUT_PRICE + completion * OUTPUT_PRICE) / 1e6
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(full_price / 2)
    # The output file is the owner's, listed with purpose batch_output.
    outputs = client_a.files.list(purpose="batch_output")
    assert done.output_file_id in [f.id for f in outputs.data]
    assert created.id in [b.id for b in client_a.batches.list(limit=100).data]


def test_lines_that_fail_go_to_the_error_file(client_a: openai.OpenAI) -> None:
    bad = json.dumps(
        {
            "custom_id": "too-hot",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": LLAMA_MODEL, "messages": [], "temperature": 5},
        }
    ).encode()
    uploaded = client_a.files.create(file=("in.jsonl", batch_lines(2) + bad), purpose="batch")
    created = client_a.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client_a, created.id, "completed", "failed")
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.error_file_id is not None
    [line] = [json.loads(x) for x in client_a.files.content(done.error_file_id).text.splitlines()]
    assert line["custom_id"] == "too-hot" and line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_a_bad_file_fails_the_batch_with_line_numbers(
    client_a: openai.OpenAI, client_b: openai.OpenAI
) -> None:
    content = (
        batch_lines(1)
        + b"not json\n"
        + batch_lines(1)  # req-0 again
        + batch_lines(1, start=5).replace(b"/v1/chat/completions", b"/v1/completions")
    )
    uploaded = client_a.files.create(file=("bad.jsonl", content), purpose="batch")
    created = client_a.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_for(client_a, created.id, "failed", "completed")
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data is not None
    found = [(e.line, e.code) for e in failed.errors.data]
    assert found == [(2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "invalid_url")]
    # Key B may use tiny-alias only: a line for tiny-llama fails validation; mixed models in
    # one batch are fine.
    mixed = batch_lines(1, model=LLAMA_ALIAS) + batch_lines(1, start=1)
    uploaded = client_b.files.create(file=("b.jsonl", mixed), purpose="batch")
    created = client_b.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_for(client_b, created.id, "failed", "completed")
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.line, e.code, e.param) for e in failed.errors.data] == [
        (2, "model_not_found", "body.model")
    ]
    mixed_ok = batch_lines(1) + batch_lines(1, start=1, model=LLAMA_ALIAS)
    uploaded = client_a.files.create(file=("a.jsonl", mixed_ok), purpose="batch")
    created = client_a.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_for(client_a, created.id, "completed", "failed").status == "completed"


def test_another_key_sees_nothing(client_a: openai.OpenAI, client_b: openai.OpenAI) -> None:
    uploaded = client_a.files.create(file=("mine.jsonl", batch_lines(1)), purpose="batch")
    created = client_a.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        lambda: client_b.files.retrieve(uploaded.id),
        lambda: client_b.files.content(uploaded.id),
        lambda: client_b.files.delete(uploaded.id),
        lambda: client_b.batches.retrieve(created.id),
        lambda: client_b.batches.cancel(created.id),
        lambda: client_b.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert uploaded.id not in [f.id for f in client_b.files.list().data]
    assert created.id not in [b.id for b in client_b.batches.list().data]
    wait_for(client_a, created.id, "completed")


def test_batches_list_newest_first_in_pages(client_b: openai.OpenAI) -> None:
    uploaded = client_b.files.create(
        file=("one.jsonl", batch_lines(1, model=LLAMA_ALIAS)), purpose="batch"
    )
    made = [
        client_b.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client_b.batches.list(limit=2)
    assert [b.id for b in first.data] == [made[2], made[1]] and first.has_more
    rest = client_b.batches.list(limit=2, after=made[1])
    assert rest.data[0].id == made[0]
    # The SDK's auto-pagination walks every page.
    assert set(made) <= {b.id for b in client_b.batches.list(limit=1)}
    for batch_id in made:
        wait_for(client_b, batch_id, "completed")


def test_cancel_mid_run_keeps_what_is_done(client_a: openai.OpenAI) -> None:
    uploaded = client_a.files.create(
        file=("long.jsonl", batch_lines(400, max_tokens=64)), purpose="batch"
    )
    created = client_a.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while True:
        batch = client_a.batches.retrieve(created.id)
        if batch.request_counts and batch.request_counts.completed >= 5:
            break
        assert time.monotonic() < deadline and batch.status in ("validating", "in_progress")
        time.sleep(0.05)
    cancelling = client_a.batches.cancel(created.id)
    asked = time.monotonic()
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = wait_for(client_a, created.id, "cancelled", timeout=10)
    assert time.monotonic() - asked < 10
    counts = cancelled.request_counts
    assert counts is not None and 5 <= counts.completed < 400
    assert cancelled.output_file_id is not None and cancelled.error_file_id is not None
    done = client_a.files.content(cancelled.output_file_id).text.splitlines()
    assert len(done) == counts.completed
    unrun = [
        json.loads(x) for x in client_a.files.content(cancelled.error_file_id).text.splitlines()
    ]
    assert len(unrun) == 400 - counts.completed - counts.failed
    assert {x["error"]["code"] for x in unrun} == {"batch_cancelled"}
    # Cancelling again answers the batch as it is; a finished batch cannot be cancelled.
    assert client_a.batches.cancel(created.id).status == "cancelled"


# -- raw HTTP, bad input on every route ------------------------------------------------------


def _error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_files_routes_refuse_bad_input(batch_server: ServerProcess) -> None:
    url = f"{batch_server.base_url}/files"
    auth = {"Authorization": f"Bearer {KEY_A}"}
    error = _error(requests.post(url, headers=auth, json={"purpose": "batch"}), 400)
    assert error["code"] == "invalid_content_type"
    error = _error(requests.post(url, headers=auth, files={"file": ("a", b"x")}), 400)
    assert error["param"] == "purpose" and error["code"] == "missing_required_parameter"
    bad_purpose = {"purpose": "batch_output"}
    error = _error(
        requests.post(url, headers=auth, data=bad_purpose, files={"file": ("a", b"x")}), 400
    )
    assert error["param"] == "purpose"
    error = _error(
        requests.post(url, headers=auth, data={"purpose": "batch"}, files={"x": ("a", b"")}), 400
    )
    assert error["param"] == "file" and error["code"] == "missing_required_parameter"
    expires = {
        "purpose": "user_data",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "5",
    }
    error = _error(requests.post(url, headers=auth, data=expires, files={"file": ("a", b"x")}), 400)
    assert error["param"] == "expires_after.seconds"
    broken = b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch'
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=xyz"}
    _error(requests.post(url, headers=headers, data=broken), 400)
    too_big = {
        **auth,
        "Content-Type": "multipart/form-data; boundary=xyz",
        "Content-Length": str(600 * 2**20),
    }
    error = _error(requests.post(url, headers=too_big, data=b""), 413)
    assert error["code"] == "file_too_large"
    assert _error(requests.post(url, files={"file": ("a", b"x")}, data={"purpose": "batch"}), 401)
    for query, param in (
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("order=up", "order"),
        ("purpose=nope", "purpose"),
    ):
        assert _error(requests.get(f"{url}?{query}", headers=auth), 400)["param"] == param
    for method, path in (
        ("GET", "file-nope"),
        ("GET", "file-nope/content"),
        ("DELETE", "file-nope"),
    ):
        error = _error(requests.request(method, f"{url}/{path}", headers=auth), 404)
        assert "file-nope" in error["message"]


def test_files_round_trip_pages_and_delete_over_raw_http(batch_server: ServerProcess) -> None:
    url = f"{batch_server.base_url}/files"
    auth = {"Authorization": f"Bearer {KEY_B}"}
    payload = b"\x00\xffbinary\n" * 10_000  # streamed in many chunks
    assert len(payload) > BODY_LIMIT  # uploads pass the body limit, which holds elsewhere
    too_big = {"model": LLAMA_MODEL, "prompt": "x" * BODY_LIMIT}
    _error(requests.post(f"{batch_server.base_url}/completions", headers=auth, json=too_big), 413)
    made = []
    for n in range(3):
        response = requests.post(
            url,
            headers=auth,
            data={"purpose": "user_data"},
            files={"file": (f"f{n}.bin", io.BytesIO(payload))},
        )
        assert response.status_code == 200, response.text
        made.append(response.json())
    assert made[0]["bytes"] == len(payload) and "expires_at" not in made[0]
    content = requests.get(f"{url}/{made[1]['id']}/content", headers=auth)
    assert content.content == payload
    page = requests.get(f"{url}?limit=2&purpose=user_data", headers=auth).json()
    assert [f["id"] for f in page["data"]] == [made[2]["id"], made[1]["id"]] and page["has_more"]
    rest = requests.get(
        f"{url}?limit=2&purpose=user_data&after={page['last_id']}", headers=auth
    ).json()
    assert [f["id"] for f in rest["data"]] == [made[0]["id"]] and not rest["has_more"]
    asc = requests.get(f"{url}?order=asc&purpose=user_data", headers=auth).json()
    assert [f["id"] for f in asc["data"]] == [m["id"] for m in made]
    deleted = requests.delete(f"{url}/{made[0]['id']}", headers=auth).json()
    assert deleted == {"id": made[0]["id"], "object": "file", "deleted": True}
    _error(requests.get(f"{url}/{made[0]['id']}", headers=auth), 404)


def test_batch_routes_refuse_bad_input(
    batch_server: ServerProcess, client_a: openai.OpenAI
) -> None:
    url = f"{batch_server.base_url}/batches"
    auth = {"Authorization": f"Bearer {KEY_A}"}
    batch_file = client_a.files.create(file=("in.jsonl", batch_lines(1)), purpose="batch").id
    other_file = client_a.files.create(file=("x.txt", b"hello"), purpose="user_data").id
    good = {
        "input_file_id": batch_file,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    cases: list[tuple[Any, int, str | None]] = [
        ("{not json", 400, None),
        ({**good, "endpoint": "/v1/responses"}, 400, "endpoint"),
        ({**good, "completion_window": "48h"}, 400, "completion_window"),
        ({k: v for k, v in good.items() if k != "input_file_id"}, 400, "input_file_id"),
        ({**good, "input_file_id": 7}, 400, "input_file_id"),
        ({**good, "input_file_id": other_file}, 400, "input_file_id"),
        ({**good, "input_file_id": "file-missing"}, 404, "file_id"),
        ({**good, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
        ({**good, "metadata": {"k": "v" * 513}}, 400, "metadata.k"),
        (
            {**good, "output_expires_after": {"anchor": "created_at", "seconds": 10}},
            400,
            "output_expires_after.seconds",
        ),
    ]
    for body, status, param in cases:
        data = body if isinstance(body, str) else json.dumps(body)
        response = requests.post(
            url, headers={**auth, "Content-Type": "application/json"}, data=data
        )
        assert _error(response, status)["param"] == param, (body, response.text)
    assert _error(requests.get(f"{url}?limit=101", headers=auth), 400)["param"] == "limit"
    assert _error(requests.get(f"{url}/batch_nope", headers=auth), 404)["param"] == "batch_id"
    assert (
        _error(requests.post(f"{url}/batch_nope/cancel", headers=auth), 404)["param"] == "batch_id"
    )
    assert _error(requests.get(url), 401)
    done = client_a.batches.create(
        input_file_id=batch_file, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(client_a, done.id, "completed")
    error = _error(requests.post(f"{url}/{done.id}/cancel", headers=auth), 409)
    assert "completed" in error["message"]


# --- kakehashi batch: the CLI against the same server -------------------------------------------


def batch_cli(
    server: ServerProcess, tmp: Path, *args: str, key: str = KEY_A
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKEHASHI_")}
    env.update(
        KAKEHASHI_BASE_URL=server.base_url,
        KAKEHASHI_API_KEY=key,
        KAKEHASHI_DATA_DIR=str(tmp),
        COLUMNS="200",
    )
    return subprocess.run(
        [sys.executable, "-m", "kakehashi.cli.main", "batch", *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_submit_waits_and_writes_the_output(
    batch_server: ServerProcess, client_a: openai.OpenAI, tmp_path: Path
) -> None:
    # Bare request bodies without a model: -m fills it in, custom ids come from line numbers.
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 2}
            )
            + "\n"
            for i in range(5)
        )
    )
    out = tmp_path / "answers.jsonl"
    result = batch_cli(
        batch_server,
        tmp_path,
        "submit",
        str(source),
        "-m",
        LLAMA_MODEL,
        "--wait",
        "-o",
        str(out),
        "--metadata",
        "job=cli",
    )
    assert result.returncode == 0, result.stderr
    assert "5 done, 0 failed of 5" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"line-{i}" for i in range(1, 6)]
    assert all(x["response"]["status_code"] == 200 for x in lines)
    batch_id = re.search(r"batch (batch_\w+) created", result.stderr)
    assert batch_id is not None
    assert client_a.batches.retrieve(batch_id[1]).metadata == {"job": "cli"}

    listed = batch_cli(batch_server, tmp_path, "list", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    ids = [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert batch_id[1] in ids
    status = batch_cli(batch_server, tmp_path, "status", batch_id[1])
    assert status.returncode == 0, status.stderr
    assert f"{batch_id[1]}  completed  5 done, 0 failed of 5" in status.stdout
    assert "output_file_id: file-" in status.stdout


def test_cli_submit_without_wait_then_cancel(
    batch_server: ServerProcess, client_a: openai.OpenAI, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(batch_lines(1500, max_tokens=64))  # tens of seconds of work
    created = batch_cli(batch_server, tmp_path, "submit", str(source))
    assert created.returncode == 0, created.stderr
    batch_id = created.stdout.strip()
    assert batch_id.startswith("batch_")
    cancelled = batch_cli(batch_server, tmp_path, "cancel", batch_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"{batch_id}  cancel")
    final = wait_for(client_a, batch_id, "cancelled")
    assert final.request_counts is not None and final.request_counts.completed < 1500
    again = batch_cli(batch_server, tmp_path, "cancel", batch_id)  # as OpenAI: idempotent
    assert again.returncode == 0 and again.stdout.startswith(f"{batch_id}  cancelled")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("submit", "missing.jsonl"), 2, "no such file"),
        (("submit", "{good}", "--metadata", "novalue"), 2, "expected KEY=VALUE"),
        (("submit", "{good}", "-o", "x.jsonl"), 2, "only --wait writes the output"),
        (("submit", "{good}", "--endpoint", "/v1/edits"), 1, "unsupported endpoint"),
        (("submit", "{not_json}"), 1, ":2: not a JSON line"),
        (("submit", "{no_model}"), 1, ":1: the request names no model; pass -m MODEL"),
        (("submit", "{empty}"), 1, "no requests in the file"),
        (("submit", "{good}", "--base-url", "http://127.0.0.1:9/v1"), 1, "Could not reach"),
        (("status", "batch_nope"), 1, "batch_nope"),
        (("cancel", "batch_nope"), 1, "batch_nope"),
        (("list", "--limit", "0"), 2, "--limit"),
    ],
)
def test_cli_bad_input(
    batch_server: ServerProcess, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    files = {
        "good": batch_lines(1),
        "not_json": batch_lines(1) + b"{oops\n",
        "no_model": b'{"messages": [{"role": "user", "content": "hi"}]}\n',
        "empty": b"\n\n",
    }
    for name, content in files.items():
        (tmp_path / f"{name}.jsonl").write_bytes(content)
    argv = [a.format(**{n: str(tmp_path / f"{n}.jsonl") for n in files}) for a in args]
    result = batch_cli(batch_server, tmp_path, *argv)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in re.sub(r"\s+", " ", result.stderr)
    assert "Traceback" not in result.stderr


def test_cli_another_key_cannot_see_the_batch(
    batch_server: ServerProcess, client_a: openai.OpenAI, tmp_path: Path
) -> None:
    uploaded = client_a.files.create(file=("in.jsonl", batch_lines(1)), purpose="batch")
    created = client_a.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    result = batch_cli(batch_server, tmp_path, "status", created.id, key=KEY_B)
    assert result.returncode == 1
    assert created.id in result.stderr and "Traceback" not in result.stderr
    wait_for(client_a, created.id, "completed")
    over = batch_cli(batch_server, tmp_path, "cancel", created.id)
    assert over.returncode == 1 and "Traceback" not in over.stderr
    assert "Cannot cancel a batch with status 'completed'" in over.stderr
    wrong_key = batch_cli(batch_server, tmp_path, "list", key="sk-not-a-key")
    assert wrong_key.returncode == 1 and "Incorrect API key" in wrong_key.stderr

"""The admin key routes and OpenAI's organization usage and costs routes, on a real server
process over SQLite and over PostgreSQL, driven with raw HTTP: good requests and bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from platform_records import usage
from typer.testing import CliRunner

from kakehashi.api.app import create_app
from kakehashi.backends.fake import FakeBackend
from kakehashi.cli.main import app as cli
from kakehashi.engine.models.tiny import make_tiny_model
from kakehashi.platform.ledger import LedgerSink, ModelPrices
from kakehashi.platform.storage.db import Database
from kakehashi.settings import Settings
from support.openapi import validate
from support.server import ServerProcess, run_server

ADMIN_KEY = "sk-admin-test-0123456789"
DAY = 86_400
T0 = 1_750_032_000  # 2025-06-16 00:00:00 UTC
USAGE = f"/v1/organization/usage/completions?start_time={T0}"
COSTS = f"/v1/organization/costs?start_time={T0}"
NO_KEY = "/admin/api_keys/key_nope"
ONE_RPM = {"model": "m", "max_requests_per_1_minute": 1}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), arch="llama", seed=0)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("server-data")
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'kakehashi.db'}"
    else:
        url = request.getfixturevalue("pg").create_database(f"http_{request.param}")
    env = {"KAKEHASHI_ADMIN_KEY": ADMIN_KEY, "KAKEHASHI_DATABASE_URL": url}
    with run_server(tiny_model, data_dir=data_dir, served_model_name="tiny", env=env) as srv:
        yield srv, {**env, "KAKEHASHI_DATA_DIR": str(data_dir)}


@pytest.fixture
def admin(server: tuple[ServerProcess, dict[str, str]]) -> Iterator[httpx.Client]:
    srv, _ = server
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=srv.root_url, headers=headers, timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_key_lifecycle_over_http(
    admin: httpx.Client, server: tuple[ServerProcess, dict[str, str]]
) -> None:
    created = admin.post(
        "/admin/api_keys", json={"name": "team-a", "tier": "tier-1", "rpm": 60, "models": ["tiny"]}
    )
    assert created.status_code == 200, created.text
    key = created.json()
    secret = key["value"]
    assert key["object"] == "organization.project.api_key" and secret.startswith("sk-kh-")
    assert key["redacted_value"] == f"{secret[:8]}...{secret[-4:]}" and key["status"] == "active"

    listed = admin.get("/admin/api_keys", params={"limit": 100}).json()
    assert listed["object"] == "list" and key["id"] in [k["id"] for k in listed["data"]]
    assert secret not in json.dumps(listed)
    fetched = admin.get(f"/admin/api_keys/{key['id']}").json()
    assert "value" not in fetched and fetched["models"] == ["tiny"]

    limit = admin.post(
        f"/admin/api_keys/{key['id']}/rate_limits",
        json={"model": "tiny", "max_requests_per_1_minute": 5, "max_tokens_per_1_minute": 900},
    ).json()
    assert limit == {
        "object": "project.rate_limit",
        "id": "rl_tiny",
        "model": "tiny",
        "max_requests_per_1_minute": 5,
        "max_tokens_per_1_minute": 900,
    }
    assert admin.get(f"/admin/api_keys/{key['id']}/rate_limits").json()["data"] == [limit]
    deny = admin.post(
        f"/admin/api_keys/{key['id']}/model_permissions",
        json={"mode": "deny_list", "model_ids": ["gpt-4"]},
    )
    assert deny.status_code == 200
    modes = admin.get(f"/admin/api_keys/{key['id']}/model_permissions").json()["data"]
    assert {"mode": "deny_list", "model_ids": ["gpt-4"]} in modes
    gone = admin.delete(f"/admin/api_keys/{key['id']}/rate_limits/rl_tiny").json()
    assert gone["deleted"] is True

    # the CLI sees the same keys
    _, env = server
    result = CliRunner().invoke(cli, ["keys", "list", "--json"], env=env)
    assert result.exit_code == 0 and key["id"] in result.stdout and secret not in result.stdout

    revoked = admin.delete(f"/admin/api_keys/{key['id']}").json()
    assert revoked == {
        "object": "organization.project.api_key.deleted",
        "id": key["id"],
        "deleted": True,
    }
    assert admin.get(f"/admin/api_keys/{key['id']}").json()["status"] == "revoked"
    srv, _ = server
    assert secret not in srv.output()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("post", "/admin/api_keys", {}, 400, "name"),
        ("post", "/admin/api_keys", {"name": "k", "rpm": 0}, 400, "rpm"),
        ("post", "/admin/api_keys", {"name": "k", "rpm": "many"}, 400, "rpm"),
        ("post", "/admin/api_keys", {"name": "k", "tier": "gold"}, 400, "tier"),
        ("post", "/admin/api_keys", {"name": "k", "colour": "red"}, 400, "colour"),
        ("post", "/admin/api_keys", {"name": "k", "expires_at": 5}, 400, "expires_at"),
        ("post", "/admin/api_keys", [1, 2], 400, None),
        ("get", "/admin/api_keys?limit=0", None, 400, "limit"),
        ("get", "/admin/api_keys?after=key_nope", None, 400, "after"),
        ("get", NO_KEY, None, 404, "key_id"),
        ("delete", NO_KEY, None, 404, "key_id"),
        ("post", f"{NO_KEY}/rate_limits", ONE_RPM, 404, "key_id"),
        ("post", f"{NO_KEY}/model_permissions", {"mode": "maybe", "model_ids": []}, 400, "mode"),
        ("get", "/v1/organization/usage/completions", None, 400, "start_time"),
        ("get", "/v1/organization/usage/completions?start_time=soon", None, 400, "start_time"),
        ("get", f"{USAGE}&bucket_width=2d", None, 400, "bucket_width"),
        ("get", f"{USAGE}&batch=maybe", None, 400, "batch"),
        ("get", f"{USAGE}&group_by=colour", None, 400, "group_by"),
        ("get", f"{COSTS}&limit=181", None, 400, "limit"),
        ("get", f"{COSTS}&page=bogus", None, 400, "page"),
    ],
)  # fmt: skip
def test_bad_requests_get_named_errors(
    admin: httpx.Client,
    method: str,
    path: str,
    body: object,
    status: int,
    param: str | None,
) -> None:
    if body is None:
        response = admin.request(method, path)
    else:
        response = admin.request(method, path, json=body)
    error = _error(response, status)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


def test_the_admin_key_guards_every_route(server: tuple[ServerProcess, dict[str, str]]) -> None:
    srv, _ = server
    for path in ("/admin/api_keys", f"/v1/organization/costs?start_time={T0}"):
        missing = _error(httpx.get(srv.root_url + path), 401)
        assert missing["code"] == "invalid_api_key"
        wrong = httpx.get(srv.root_url + path, headers={"Authorization": "Bearer sk-nope"})
        assert _error(wrong, 401)["message"] == "Incorrect admin key provided."


def test_usage_and_costs_pages(
    admin: httpx.Client, server: tuple[ServerProcess, dict[str, str]], tmp_path: Path
) -> None:
    _, env = server
    db = Database.open(env["KAKEHASHI_DATABASE_URL"], tmp_path)
    sink = LedgerSink(db, prices={"tiny": ModelPrices(input=1.0, output=2.0)}.get)
    sink.start()
    for n in range(3):
        sink.record(usage(1000 + n, model="tiny", started_at=T0 + 60 * n))
    sink.record(usage(2000, model="tiny", key_id="key_b", started_at=T0 + DAY))
    sink.close()
    db.close()

    params = {"start_time": T0, "end_time": T0 + 2 * DAY, "group_by[]": ["api_key_id", "model"]}
    page = admin.get("/v1/organization/usage/completions", params=params).json()
    validate("UsageResponse", page)
    first, second = page["data"]
    assert [(r["api_key_id"], r["num_model_requests"]) for r in first["results"]] == [("key_a", 3)]
    assert [(r["api_key_id"], r["input_tokens"]) for r in second["results"]] == [("key_b", 100)]
    by_minute = {"start_time": T0, "end_time": T0 + 180, "bucket_width": "1m", "limit": 2}
    minutes = admin.get("/v1/organization/usage/completions", params=by_minute).json()
    assert minutes["has_more"] is True
    by_minute["page"] = minutes["next_page"]
    rest = admin.get("/v1/organization/usage/completions", params=by_minute).json()
    assert [b["start_time"] for b in rest["data"]] == [T0 + 120] and rest["has_more"] is False

    costs = admin.get(
        "/v1/organization/costs",
        params={"start_time": T0, "end_time": T0 + DAY, "group_by": "line_item"},
    ).json()
    validate("UsageResponse", costs)
    [result] = costs["data"][0]["results"]
    assert result["line_item"] == "tiny"
    expected = 3 * (100 * 1 + 10 * 2) / 1e6
    assert result["amount"] == {"value": pytest.approx(expected), "currency": "usd"}


def test_an_admin_api_without_an_admin_key_is_disabled(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), backend=FakeBackend())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.get("/admin/api_keys", headers={"Authorization": "Bearer x"})
    error = _error(response, 403)
    assert error["code"] == "admin_api_disabled" and "KAKEHASHI_ADMIN_KEY" in str(error["message"])

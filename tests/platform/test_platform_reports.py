"""Reading the ledger on SQLite and PostgreSQL: OpenAI's usage and costs pages (buckets,
grouping, filters, pagination, bad parameters) and the CLI summary."""

from __future__ import annotations

from dataclasses import replace

import pytest
from platform_records import usage

from kakehashi.errors import InvalidRequestError
from kakehashi.platform.ledger import LedgerSink, ModelPrices
from kakehashi.platform.reports import UsageQuery, completions_usage, costs, summary
from kakehashi.platform.storage.db import Database
from support.openapi import validate

DAY = 86_400
T0 = 1_750_032_000  # 2025-06-16 00:00:00 UTC
PRICES = {"gpt-4": ModelPrices(input=30.0, output=60.0), "small": ModelPrices(1.0, 2.0)}


@pytest.fixture
def ledger(database: Database) -> Database:
    sink = LedgerSink(database, prices=PRICES.get)
    sink.start()
    # day 0: two gpt-4 calls by key_a (one cached), one small by key_b; day 2: one batch call
    sink.record(usage(1, started_at=T0 + 10, prompt_tokens=100, completion_tokens=10))
    sink.record(
        usage(2, started_at=T0 + 70, prompt_tokens=200, cached_tokens=50, completion_tokens=20)
    )
    sink.record(usage(3, key_id="key_b", model="small", started_at=T0 + 3700))
    sink.record(usage(4, started_at=T0 + 2 * DAY + 5, batch_id="batch_1"))
    sink.record(usage(5, endpoint="embeddings", model="ada", started_at=T0 + 20))
    sink.record(usage(6, started_at=T0 - 1))  # before the range
    sink.close()
    return database


def test_daily_usage_buckets_in_openai_shape(ledger: Database) -> None:
    page = completions_usage(ledger, UsageQuery(start_time=T0, end_time=T0 + 3 * DAY))
    validate("UsageResponse", page)
    assert [b["start_time"] for b in page["data"]] == [T0, T0 + DAY, T0 + 2 * DAY]
    assert [b["end_time"] for b in page["data"]] == [T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]
    first, empty, third = (b["results"] for b in page["data"])
    assert empty == []
    [day0] = first
    assert day0["object"] == "organization.usage.completions.result"
    assert day0["num_model_requests"] == 3  # the embedding and the earlier call are not counted
    assert day0["input_tokens"] == 400 and day0["input_cached_tokens"] == 50
    assert day0["input_uncached_tokens"] == 350 and day0["output_tokens"] == 40
    assert day0["model"] is None and day0["api_key_id"] is None
    assert third[0]["num_model_requests"] == 1
    assert page["has_more"] is False and page["next_page"] is None


def test_grouping_and_filters(ledger: Database) -> None:
    query = UsageQuery(start_time=T0, end_time=T0 + DAY, group_by=("api_key_id", "model"))
    [bucket] = completions_usage(ledger, query)["data"]
    groups = {(r["api_key_id"], r["model"]): r["num_model_requests"] for r in bucket["results"]}
    assert groups == {("key_a", "gpt-4"): 2, ("key_b", "small"): 1}
    only_b = UsageQuery(start_time=T0, end_time=T0 + DAY, api_key_ids=("key_b",))
    assert completions_usage(ledger, only_b)["data"][0]["results"][0]["num_model_requests"] == 1
    batch = UsageQuery(start_time=T0, end_time=T0 + 3 * DAY, batch=True, group_by=("batch",))
    results = [r for b in completions_usage(ledger, batch)["data"] for r in b["results"]]
    assert [(r["batch"], r["num_model_requests"]) for r in results] == [(True, 1)]
    by_model = UsageQuery(start_time=T0, end_time=T0 + DAY, models=("small",))
    assert completions_usage(ledger, by_model)["data"][0]["results"][0]["input_tokens"] == 100


def test_minute_buckets_start_on_whole_minutes_and_page(ledger: Database) -> None:
    query = UsageQuery(start_time=T0 + 30, end_time=T0 + 180, bucket_width="1m", limit=2)
    page = completions_usage(ledger, query)
    assert [b["start_time"] for b in page["data"]] == [T0, T0 + 60]
    assert [len(b["results"]) for b in page["data"]] == [1, 1]
    assert page["has_more"] is True
    rest = completions_usage(ledger, replace(query, page=page["next_page"]))
    assert [b["start_time"] for b in rest["data"]] == [T0 + 120]
    assert rest["has_more"] is False


def test_costs_by_line_item_and_key(ledger: Database) -> None:
    query = UsageQuery(start_time=T0, end_time=T0 + DAY, group_by=("line_item", "api_key_id"))
    page = costs(ledger, query)
    validate("UsageResponse", page)
    amounts = {
        (r["api_key_id"], r["line_item"]): r["amount"]["value"] for r in page["data"][0]["results"]
    }
    gpt4 = (100 * 30 + 10 * 60 + 200 * 30 + 20 * 60) / 1e6
    assert amounts[("key_a", "gpt-4")] == pytest.approx(gpt4)
    assert amounts[("key_b", "small")] == pytest.approx((100 * 1 + 10 * 2) / 1e6)
    total = costs(ledger, UsageQuery(start_time=T0, end_time=T0 + DAY))["data"][0]["results"]
    assert total[0]["amount"]["currency"] == "usd" and total[0]["line_item"] is None


@pytest.mark.parametrize(
    ("query", "param"),
    [
        (UsageQuery(start_time=T0, bucket_width="2h"), "bucket_width"),
        (UsageQuery(start_time=T0, limit=0), "limit"),
        (UsageQuery(start_time=T0, limit=32), "limit"),
        (UsageQuery(start_time=T0, bucket_width="1h", limit=169), "limit"),
        (UsageQuery(start_time=T0, group_by=("colour",)), "group_by"),
        (UsageQuery(start_time=T0, end_time=T0), "end_time"),
        (UsageQuery(start_time=-5), "start_time"),
        (UsageQuery(start_time=T0, page="nonsense"), "page"),
        (UsageQuery(start_time=T0, page="page_AAAAAAAAAAE="), "page"),
    ],
)
def test_bad_parameters_name_themselves(ledger: Database, query: UsageQuery, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        completions_usage(ledger, query, now=T0 + 3 * DAY)
    assert caught.value.param == param


def test_costs_take_only_daily_buckets(ledger: Database) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        costs(ledger, UsageQuery(start_time=T0, bucket_width="1h"))
    assert caught.value.param == "bucket_width"
    with pytest.raises(InvalidRequestError):
        costs(ledger, UsageQuery(start_time=T0, limit=181))
    with pytest.raises(InvalidRequestError):
        costs(ledger, UsageQuery(start_time=T0, group_by=("model",)))


def test_cli_summary(ledger: Database) -> None:
    by_model = {r.group: r for r in summary(ledger, by="model", since=T0)}
    assert set(by_model) == {"gpt-4", "small", "ada"}
    assert by_model["gpt-4"].requests == 3 and by_model["gpt-4"].cached_tokens == 50
    by_day = [r.group for r in summary(ledger, by="day", since=T0 - DAY)]
    assert by_day == ["2025-06-15", "2025-06-16", "2025-06-18"]
    by_key = {r.group: r.requests for r in summary(ledger, by="key", since=T0)}
    assert by_key == {"key_a": 4, "key_b": 1}

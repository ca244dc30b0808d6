"""The file store: streamed content, ownership, paging, the size limit, expiry and purge, on
SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from kakehashi.errors import InvalidRequestError, NotFoundError, RequestTooLargeError
from kakehashi.platform.files import (
    BATCH_INPUT_TTL_SECONDS,
    FileStore,
    check_expires_after,
    check_purpose,
)
from kakehashi.platform.storage.db import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database: Database, tmp_path: Path, clock: Clock) -> FileStore:
    return FileStore(database, tmp_path / "files", max_bytes=1000, clock=clock)


def test_content_round_trips_in_chunks_and_only_the_owner_sees_it(store: FileStore) -> None:
    made = store.create(
        [b'{"a": 1}\n', b'{"b": 2}\n'], owner="key_a", filename="in.jsonl", purpose="batch"
    )
    assert made.id.startswith("file-") and made.bytes == 18
    assert made.expires_at == made.created_at + BATCH_INPUT_TTL_SECONDS
    assert b"".join(store.read(made.id, owner="key_a", chunk_size=4)) == b'{"a": 1}\n{"b": 2}\n'
    assert store.get(made.id, owner="key_a").to_dict()["object"] == "file"
    for action in (
        lambda: store.get(made.id, owner="key_b"),
        lambda: store.read(made.id, owner="key_b"),
        lambda: store.delete(made.id, owner="key_b"),
    ):
        with pytest.raises(NotFoundError, match=made.id):
            action()
    assert store.page(owner="key_b") == ([], False)


def test_over_the_limit_is_413_and_leaves_nothing(store: FileStore) -> None:
    with pytest.raises(RequestTooLargeError), store.writer() as written:
        for _ in range(11):
            written.write(b"x" * 100)
    assert [p.name for p in store.root.iterdir()] == []
    assert store.page(owner="key_a") == ([], False)


def test_pages_by_id_in_either_order_and_filters_by_purpose(store: FileStore) -> None:
    ids = [
        store.create([b"x"], owner="k", filename=f"{i}", purpose=p).id
        for i, p in enumerate(["batch", "user_data", "batch", "batch"])
    ]
    newest, more = store.page(owner="k", limit=2)
    assert [f.id for f in newest] == ids[::-1][:2] and more
    rest, more = store.page(owner="k", limit=2, after=newest[-1].id)
    assert [f.id for f in rest] == ids[::-1][2:] and not more
    oldest, _ = store.page(owner="k", order="asc", limit=10)
    assert [f.id for f in oldest] == ids
    batch_only, _ = store.page(owner="k", purpose="batch")
    assert len(batch_only) == 3


def test_delete_removes_row_and_content(store: FileStore) -> None:
    made = store.create([b"x"], owner="k", filename="a", purpose="user_data")
    store.delete(made.id, owner="k")
    assert not store.content_path(made.id).exists()
    with pytest.raises(NotFoundError):
        store.get(made.id, owner="k")
    with pytest.raises(NotFoundError):
        store.delete(made.id, owner="k")


def test_expired_files_vanish_then_are_purged(store: FileStore, clock: Clock) -> None:
    batch = store.create([b"x"], owner="k", filename="a", purpose="batch")
    kept = store.create([b"y"], owner="k", filename="b", purpose="user_data")
    short = store.create([b"z"], owner="k", filename="c", purpose="user_data", expires_after=3600)
    clock.now += 3601
    with pytest.raises(NotFoundError):
        store.get(short.id, owner="k")
    assert store.purge_expired() == 1
    clock.now += BATCH_INPUT_TTL_SECONDS
    assert store.purge_expired() == 1
    assert not store.content_path(batch.id).exists()
    assert [f.id for f in store.page(owner="k")[0]] == [kept.id]


def test_purpose_and_expiry_checks_name_the_problem() -> None:
    assert check_purpose("batch") == "batch"
    with pytest.raises(InvalidRequestError) as missing:
        check_purpose(None)
    assert missing.value.param == "purpose" and missing.value.code == "missing_required_parameter"
    with pytest.raises(InvalidRequestError, match="'batch_output' is not one of"):
        check_purpose("batch_output")
    assert check_expires_after(None, None) is None
    assert check_expires_after("created_at", "7200") == 7200
    with pytest.raises(InvalidRequestError) as anchor:
        check_expires_after("uploaded_at", 7200)
    assert anchor.value.param == "expires_after.anchor"
    with pytest.raises(InvalidRequestError) as seconds:
        check_expires_after("created_at", 60)
    assert seconds.value.param == "expires_after.seconds"

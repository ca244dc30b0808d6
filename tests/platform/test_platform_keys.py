"""API keys on SQLite and PostgreSQL: hashed storage, revocation, expiry, the cache, bootstrap
keys, and bad input."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from kakehashi.errors import InvalidRequestError, NotFoundError
from kakehashi.gateway.context import key_hash
from kakehashi.platform.keys import (
    DatabaseKeyStore,
    KeyRepository,
    ModelLimit,
    NewKey,
    bootstrap_principals,
)
from kakehashi.platform.storage.db import Database
from kakehashi.settings import DEFAULT_TIERS, KeySpec

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _everything_stored(db: Database) -> str:
    """Every value of every table, as text."""
    parts: list[str] = []
    with db.connection() as conn:
        for table in sa.inspect(db.engine).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                parts.extend(str(value) for value in row)
    return "\n".join(parts)


async def test_only_the_hash_is_stored_and_the_key_never_logged(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    repo = KeyRepository(database)
    record, secret = repo.create(NewKey(name="team-a", tier="tier-1"), tiers=DEFAULT_TIERS)
    assert secret.startswith("sk-kh-") and len(secret) > 40
    assert record.redacted_value == f"{secret[:8]}...{secret[-4:]}"
    store = DatabaseKeyStore(repo)
    principal = await store.authenticate(secret)
    assert principal is not None and principal.key_id == record.id and principal.tier == "tier-1"
    await store.authenticate(secret + "x")
    repo.revoke(record.id)

    stored = _everything_stored(database)
    assert key_hash(secret) in stored
    assert secret not in stored and secret[8:-4] not in stored
    if database.dialect == "sqlite":
        assert database.engine.url.database is not None
        for path in Path(database.engine.url.database).parent.glob("kakehashi.db*"):
            assert secret.encode() not in path.read_bytes()
    assert secret not in caplog.text and secret[8:-4] not in caplog.text


async def test_revoked_and_expired_keys_are_refused(database: Database) -> None:
    clock = Clock()
    repo = KeyRepository(database, clock=clock)
    keep, keep_secret = repo.create(NewKey(name="keep"), tiers=DEFAULT_TIERS)
    gone, gone_secret = repo.create(NewKey(name="gone"), tiers=DEFAULT_TIERS)
    brief, brief_secret = repo.create(
        NewKey(name="brief", expires_at=int(clock.now) + 60), tiers=DEFAULT_TIERS
    )
    here = DatabaseKeyStore(repo, clock=clock, cache_seconds=3600)
    elsewhere = DatabaseKeyStore(repo, clock=clock, cache_seconds=0)  # another replica
    for store in (here, elsewhere):
        for secret in (keep_secret, gone_secret, brief_secret):
            assert await store.authenticate(secret) is not None

    repo.revoke(gone.id)
    here.forget(gone.id)  # what the admin API does in the process that revoked
    assert await here.authenticate(gone_secret) is None
    assert await elsewhere.authenticate(gone_secret) is None
    assert repo.get(gone.id).status(clock.now) == "revoked"

    clock.now += 61  # expiry is checked on every request, cached or not
    assert await here.authenticate(brief_secret) is None
    assert await elsewhere.authenticate(brief_secret) is None
    assert repo.get(brief.id).status(clock.now) == "expired"
    assert await here.authenticate(keep_secret) is not None
    assert keep.status(clock.now) == "active"


async def test_a_revocation_reaches_other_replicas_within_the_cache_time(
    database: Database,
) -> None:
    repo = KeyRepository(database)
    record, secret = repo.create(NewKey(name="k"), tiers=DEFAULT_TIERS)
    other = DatabaseKeyStore(repo, cache_seconds=0.2)
    assert await other.authenticate(secret) is not None
    repo.revoke(record.id)
    assert await other.authenticate(secret) is not None  # still cached: at most 0.2 s
    await asyncio.sleep(0.25)
    assert await other.authenticate(secret) is None


async def test_auth_is_required_once_any_key_exists_even_if_all_are_revoked(
    database: Database,
) -> None:
    repo = KeyRepository(database)
    store = DatabaseKeyStore(repo, cache_seconds=0)
    assert not store.auth_required
    record, _ = repo.create(NewKey(name="k"), tiers=DEFAULT_TIERS)
    assert store.auth_required
    repo.revoke(record.id)
    assert DatabaseKeyStore(repo, cache_seconds=0).auth_required


async def test_settings_keys_still_work_as_a_bootstrap(database: Database) -> None:
    specs = [KeySpec(key="sk-from-settings", tier="free", models=("m1",), name="boot")]
    store = DatabaseKeyStore(KeyRepository(database), bootstrap=bootstrap_principals(specs))
    assert store.auth_required
    principal = await store.authenticate("sk-from-settings")
    assert principal is not None
    assert principal.label == "boot" and principal.tier == "free"
    assert principal.allowed_models == frozenset({"m1"})
    assert principal.key_id.startswith("cfg_") and "sk-from-settings" not in principal.key_id
    assert await store.authenticate("sk-from-settingz") is None


async def test_model_permissions_and_limits(database: Database) -> None:
    repo = KeyRepository(database)
    record, _ = repo.create(NewKey(name="k", models=("a", "b")), tiers=DEFAULT_TIERS)
    assert record.principal().may_use(["a"], None)
    assert not record.principal().may_use(["c"], None)
    updated = repo.set_model_permissions(record.id, "deny_list", ["b"])
    assert not updated.principal().may_use(["b"], None)
    assert updated.principal().may_use(["a"], None)
    updated = repo.set_model_limit(record.id, "a", ModelLimit(rpm=5, tpm=100))
    assert updated.model_limits == {"a": ModelLimit(rpm=5, tpm=100)}
    assert repo.set_model_limit(record.id, "a", None).model_limits == {}
    with pytest.raises(NotFoundError):
        repo.set_model_limit("key_nope", "a", ModelLimit(rpm=1))
    with pytest.raises(NotFoundError):
        repo.set_model_permissions("key_nope", "allow_list", ["a"])
    with pytest.raises(NotFoundError):
        repo.revoke("key_nope")


def test_listing_pages_in_creation_order(database: Database) -> None:
    clock = Clock()
    repo = KeyRepository(database, clock=clock)
    ids = []
    for n in range(5):
        clock.now += 1
        ids.append(repo.create(NewKey(name=f"k{n}"), tiers=DEFAULT_TIERS)[0].id)
    assert [k.id for k in repo.list()] == ids
    assert [k.id for k in repo.list(limit=2)] == ids[:2]
    assert [k.id for k in repo.list(after=ids[1], limit=2)] == ids[2:4]
    assert repo.count() == 5


@pytest.mark.parametrize(
    ("new", "param"),
    [
        (NewKey(name=" "), "name"),
        (NewKey(name="x" * 201), "name"),
        (NewKey(name="k", tier="gold"), "tier"),
        (NewKey(name="k", models=()), "models"),
        (NewKey(name="k", models=("a", " ")), "models"),
        (NewKey(name="k", rpm=0), "rpm"),
        (NewKey(name="k", tpm=-5), "tpm"),
        (NewKey(name="k", tpm=2**31), "tpm"),  # would overflow the column on PostgreSQL
        (NewKey(name="k", budget_usd=-1.0), "budget_usd"),
        (NewKey(name="k", budget_usd=float("nan")), "budget_usd"),
        (NewKey(name="k", expires_at=1), "expires_at"),
    ],
)
def test_bad_new_keys_name_the_parameter(database: Database, new: NewKey, param: str) -> None:
    repo = KeyRepository(database)
    with pytest.raises(InvalidRequestError) as caught:
        repo.create(new, tiers=DEFAULT_TIERS)
    assert caught.value.param == param
    assert repo.count() == 0

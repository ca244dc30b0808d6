"""API keys kept in the platform database, as SHA-256 hashes only.

:class:`KeyRepository` creates, lists and revokes keys (the CLI and the admin API use it);
:class:`DatabaseKeyStore` is the gateway's :class:`~kakehashi.gateway.context.KeyStore` on top of
it: a presented key is hashed and looked up by its hash (so neither timing nor the database
ever sees the key), verified keys are cached for ``cache_seconds``, and revocation and expiry
are honoured on every request. Keys from the settings file keep working beside them, as a
bootstrap.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import sqlalchemy as sa

from kakehashi.errors import InvalidRequestError, NotFoundError
from kakehashi.gateway.context import OPEN_ACCESS, Principal, key_hash
from kakehashi.platform.storage import tables
from kakehashi.platform.storage.db import Database
from kakehashi.settings import KeySpec, Settings

KEY_PREFIX = "sk-kh-"
MAX_RATE = 2**31 - 1
"""The largest per-minute limit a key may have (the column is a 32-bit integer)."""
KeyStatus = Literal["active", "revoked", "expired"]


def generate_key() -> str:
    """A new secret key: ``sk-kh-`` and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def redact(key: str) -> str:
    """How a key is shown after creation: its prefix and last four characters."""
    return f"{key[:8]}...{key[-4:]}"


@dataclass(frozen=True, slots=True)
class ModelLimit:
    """Per-minute limits of one key on one model (None: no limit)."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: everything but the key itself. Times are Unix seconds."""

    id: str
    name: str
    redacted_value: str
    created_at: int
    tier: str | None = None
    allowed_models: tuple[str, ...] | None = None
    denied_models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    model_limits: Mapping[str, ModelLimit] = field(default_factory=dict)
    budget_usd: float | None = None
    spent_usd: float = 0.0
    store_bodies: bool = False
    expires_at: int | None = None
    revoked_at: int | None = None
    last_used_at: int | None = None

    def status(self, now: float) -> KeyStatus:
        """Whether the key may be used at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def principal(self) -> Principal:
        """What the key may do, as the gateway sees it."""
        return Principal(
            key_id=self.id,
            label=self.name,
            tier=self.tier,
            allowed_models=frozenset(self.allowed_models) if self.allowed_models else None,
            denied_models=frozenset(self.denied_models),
            store_bodies=self.store_bodies,
        )


@dataclass(frozen=True, slots=True)
class NewKey:
    """What ``keys create`` asks for. Invalid values raise
    :class:`~kakehashi.errors.InvalidRequestError` naming the parameter."""

    name: str
    tier: str | None = None
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    expires_at: int | None = None
    store_bodies: bool = False

    def validate(self, *, tiers: Sequence[str], now: float) -> None:
        """Check every field against ``tiers`` and the current time ``now``."""
        if not self.name.strip() or len(self.name) > 200:
            raise InvalidRequestError(
                "The key name must be 1 to 200 characters.", param="name", code="invalid_value"
            )
        if self.tier is not None and self.tier not in tiers:
            raise InvalidRequestError(
                f"Unknown tier '{self.tier}'; the tiers are {', '.join(tiers)}.",
                param="tier",
                code="invalid_value",
            )
        if self.models is not None and (not self.models or not all(m.strip() for m in self.models)):
            raise InvalidRequestError(
                "The model list must name at least one model, without empty names.",
                param="models",
                code="invalid_value",
            )
        for param, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and not 1 <= value <= MAX_RATE:
                raise InvalidRequestError(
                    f"Invalid '{param}': must be from 1 to {MAX_RATE}, but got {value}.",
                    param=param,
                    code="invalid_value",
                )
        if self.budget_usd is not None and not self.budget_usd >= 0:
            raise InvalidRequestError(
                f"Invalid 'budget_usd': must be 0 or more, but got {self.budget_usd}.",
                param="budget_usd",
                code="invalid_value",
            )
        if self.expires_at is not None and self.expires_at <= now:
            raise InvalidRequestError(
                "The expiry must be in the future.", param="expires_at", code="invalid_value"
            )


def _limits_from_json(value: Any) -> dict[str, ModelLimit]:
    return {m: ModelLimit(rpm=v.get("rpm"), tpm=v.get("tpm")) for m, v in (value or {}).items()}


def _limits_to_json(limits: Mapping[str, ModelLimit]) -> dict[str, dict[str, int | None]]:
    return {m: {"rpm": v.rpm, "tpm": v.tpm} for m, v in sorted(limits.items())}


def _from_row(row: sa.Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        redacted_value=m["redacted_value"],
        created_at=m["created_at"],
        tier=m["tier"],
        allowed_models=tuple(m["allowed_models"]) if m["allowed_models"] is not None else None,
        denied_models=tuple(m["denied_models"] or ()),
        rpm=m["rpm"],
        tpm=m["tpm"],
        model_limits=_limits_from_json(m["model_limits"]),
        budget_usd=m["budget_usd"],
        spent_usd=m["spent_usd"],
        store_bodies=m["store_bodies"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        last_used_at=m["last_used_at"],
    )


class KeyRepository:
    """Keys in the database. Blocking; async callers use a thread."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def create(self, new: NewKey, *, tiers: Sequence[str]) -> tuple[ApiKey, str]:
        """Store a new key; returns it with the secret, which is never seen again."""
        now = self.clock()
        new.validate(tiers=tiers, now=now)
        secret = generate_key()
        record = ApiKey(
            id=f"key_{secrets.token_hex(12)}",
            name=new.name.strip(),
            redacted_value=redact(secret),
            created_at=int(now),
            tier=new.tier,
            allowed_models=tuple(m.strip() for m in new.models) if new.models else None,
            rpm=new.rpm,
            tpm=new.tpm,
            budget_usd=new.budget_usd,
            store_bodies=new.store_bodies,
            expires_at=new.expires_at,
        )
        with self.db.connection() as conn:
            conn.execute(
                tables.api_keys.insert().values(
                    id=record.id,
                    name=record.name,
                    key_hash=key_hash(secret),
                    redacted_value=record.redacted_value,
                    tier=record.tier,
                    allowed_models=list(record.allowed_models) if record.allowed_models else None,
                    denied_models=None,
                    rpm=record.rpm,
                    tpm=record.tpm,
                    model_limits=None,
                    budget_usd=record.budget_usd,
                    spent_usd=0.0,
                    store_bodies=record.store_bodies,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                )
            )
        return record, secret

    def get(self, key_id: str) -> ApiKey:
        """The key ``key_id``; :class:`~kakehashi.errors.NotFoundError` if there is none."""
        with self.db.connection() as conn:
            row = conn.execute(
                sa.select(tables.api_keys).where(tables.api_keys.c.id == key_id)
            ).first()
        if row is None:
            raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
        return _from_row(row)

    def find_by_hash(self, hashed: str) -> ApiKey | None:
        """The key whose SHA-256 is ``hashed``, whatever its status."""
        with self.db.connection() as conn:
            row = conn.execute(
                sa.select(tables.api_keys).where(tables.api_keys.c.key_hash == hashed)
            ).first()
        return _from_row(row) if row is not None else None

    def list(self, *, after: str | None = None, limit: int | None = None) -> list[ApiKey]:
        """Keys, oldest first (then by id), starting after the key ``after``."""
        query = sa.select(tables.api_keys).order_by(
            tables.api_keys.c.created_at, tables.api_keys.c.id
        )
        if after is not None:
            anchor = self.get(after)
            query = query.where(
                sa.tuple_(tables.api_keys.c.created_at, tables.api_keys.c.id)
                > sa.tuple_(sa.literal(anchor.created_at), sa.literal(anchor.id))
            )
        if limit is not None:
            query = query.limit(limit)
        with self.db.connection() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def count(self) -> int:
        """How many keys were ever created (revoked ones included)."""
        with self.db.connection() as conn:
            query = sa.select(sa.func.count()).select_from(tables.api_keys)
            return int(conn.execute(query).scalar_one())

    def revoke(self, key_id: str) -> ApiKey:
        """End the key ``key_id`` now (a no-op for one already revoked)."""
        with self.db.connection() as conn:
            conn.execute(
                tables.api_keys.update()
                .where(tables.api_keys.c.id == key_id, tables.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=int(self.clock()))
            )
        return self.get(key_id)

    def set_model_limit(self, key_id: str, model: str, limit: ModelLimit | None) -> ApiKey:
        """Set (or with None, remove) the key's per-minute limits on ``model``."""
        with self.db.connection() as conn:
            row = conn.execute(
                sa.select(tables.api_keys.c.model_limits)
                .where(tables.api_keys.c.id == key_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
            limits = _limits_from_json(row[0])
            if limit is None:
                limits.pop(model, None)
            else:
                limits[model] = limit
            conn.execute(
                tables.api_keys.update()
                .where(tables.api_keys.c.id == key_id)
                .values(model_limits=_limits_to_json(limits) or None)
            )
        return self.get(key_id)

    def set_model_permissions(
        self, key_id: str, mode: Literal["allow_list", "deny_list"], model_ids: Iterable[str]
    ) -> ApiKey:
        """Replace the key's allow-list or deny-list (an empty allow-list removes it)."""
        models = sorted({m for m in model_ids})
        values: dict[str, Any]
        if mode == "allow_list":
            values = {"allowed_models": models or None}
        else:
            values = {"denied_models": models or None}
        with self.db.connection() as conn:
            done = conn.execute(
                tables.api_keys.update().where(tables.api_keys.c.id == key_id).values(**values)
            )
            if done.rowcount == 0:
                raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
        return self.get(key_id)


def bootstrap_principals(specs: Iterable[KeySpec]) -> dict[str, Principal]:
    """The settings file's keys as principals; their ledger id is ``cfg_`` and a digest."""
    principals: dict[str, Principal] = {}
    for spec in specs:
        digest = hashlib.sha256(b"kakehashi-key-id:" + spec.key.encode()).hexdigest()[:16]
        principals[spec.key] = Principal(
            key_id=f"cfg_{digest}",
            label=spec.label,
            tier=spec.tier,
            allowed_models=frozenset(spec.models) if spec.models is not None else None,
        )
    return principals


@dataclass(slots=True)
class _Cached:
    key: ApiKey | None
    fetched: float


class DatabaseKeyStore:
    """The gateway's key store on the database, with settings-file keys as a bootstrap.

    A verified (or unknown) key is trusted for ``cache_seconds`` before the database is asked
    again, so a revocation made elsewhere takes effect within that time (at once in this
    process). Expiry is checked on every request. Once any key exists the server requires
    keys, even if every key is later revoked.
    """

    def __init__(
        self,
        repo: KeyRepository,
        *,
        bootstrap: Mapping[str, Principal] | None = None,
        cache_seconds: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.clock = clock
        self._bootstrap = {key_hash(k): p for k, p in (bootstrap or {}).items()}
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._by_id: dict[str, ApiKey] = {}
        self._hash_of_id: dict[str, str] = {}
        self._lock = threading.Lock()
        self._any_stored = False
        self._checked_any_at = float("-inf")

    @property
    def auth_required(self) -> bool:
        if self._bootstrap or self._any_stored:
            return True
        # Keys may have been created by another process since: look again now and then.
        if time.monotonic() - self._checked_any_at >= self.cache_seconds:
            self._checked_any_at = time.monotonic()
            self._any_stored = self.repo.count() > 0
        return self._any_stored

    async def authenticate(self, presented: str) -> Principal | None:
        hashed = key_hash(presented)
        principal = self._from_bootstrap(hashed)
        if principal is not None:
            return principal
        cached = self._cached(hashed)
        if cached is None:
            record = await asyncio.to_thread(self.repo.find_by_hash, hashed)
            cached = self._remember(hashed, record)
        key = cached.key
        if key is None or key.status(self.clock()) != "active":
            return None
        return key.principal()

    def _from_bootstrap(self, hashed: str) -> Principal | None:
        found: Principal | None = None
        # Compare with every bootstrap hash, so timing says nothing about near misses.
        for stored, principal in self._bootstrap.items():
            if secrets.compare_digest(hashed, stored) and found is None:
                found = principal
        return found

    def _cached(self, hashed: str) -> _Cached | None:
        with self._lock:
            entry = self._cache.get(hashed)
            if entry is None or time.monotonic() - entry.fetched > self.cache_seconds:
                return None
            self._cache.move_to_end(hashed)
            return entry

    def _remember(self, hashed: str, key: ApiKey | None) -> _Cached:
        entry = _Cached(key, time.monotonic())
        with self._lock:
            self._cache[hashed] = entry
            self._cache.move_to_end(hashed)
            while len(self._cache) > self.cache_size:
                _, evicted = self._cache.popitem(last=False)
                if evicted.key is not None:
                    self._by_id.pop(evicted.key.id, None)
                    self._hash_of_id.pop(evicted.key.id, None)
            if key is not None:
                self._any_stored = True
                self._by_id[key.id] = key
                self._hash_of_id[key.id] = hashed
        return entry

    def key(self, key_id: str) -> ApiKey | None:
        """The stored key ``key_id`` as last read (None for bootstrap keys or unseen ones)."""
        return self._by_id.get(key_id)

    def is_active(self, key_id: str) -> bool:
        """Whether ``key_id`` may still make requests: a settings key (or the open server's
        anonymous caller) always; a stored key until it is revoked or expires, as the database
        says now."""
        if key_id == OPEN_ACCESS.key_id:
            return True
        if any(principal.key_id == key_id for principal in self._bootstrap.values()):
            return True
        try:
            key = self.repo.get(key_id)
        except NotFoundError:
            return False
        return key.status(self.clock()) == "active"

    def add_spend(self, spend: Mapping[str, float]) -> None:
        """Count spend just written to the ledger in the cached keys, until they are re-read."""
        with self._lock:
            for key_id, usd in spend.items():
                key = self._by_id.get(key_id)
                if key is None:
                    continue
                key = replace(key, spent_usd=key.spent_usd + usd)
                self._by_id[key_id] = key
                hashed = self._hash_of_id[key_id]
                entry = self._cache.get(hashed)
                if entry is not None:
                    entry.key = key

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after it changed here), so the next use reads it again."""
        with self._lock:
            hashed = self._hash_of_id.pop(key_id, None)
            self._by_id.pop(key_id, None)
            if hashed is not None:
                self._cache.pop(hashed, None)


def bootstrap_from_settings(settings: Settings) -> dict[str, Principal]:
    """:func:`bootstrap_principals` of every key the settings configure."""
    return bootstrap_principals(settings.all_keys())

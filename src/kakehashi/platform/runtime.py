"""The platform assembled from the settings: what the server builds once and the gateway calls.

::

    platform = Platform.open(settings, prices=catalog_prices)   # migrates the database
    await platform.start()                                      # writers and the purge job
    ... platform.key_store, platform.limiter, platform.ledger, platform.bodies ...
    await platform.stop()                                       # writes what is queued

``key_store`` (:class:`~kakehashi.gateway.context.KeyStore`), ``limiter``
(:class:`~kakehashi.gateway.context.Limiter`) and ``ledger``
(:class:`~kakehashi.gateway.context.UsageSink`) plug into the gateway's seams; they share the
spend each key has run up, so budgets see the ledger's rows before they are even written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kakehashi.platform.batches.store import BatchStore
from kakehashi.platform.files import FileStore
from kakehashi.platform.keys import DatabaseKeyStore, KeyRepository, bootstrap_from_settings
from kakehashi.platform.ledger import LedgerSink, PriceLookup, no_prices
from kakehashi.platform.ratelimit import MemoryRateStore, PlatformLimiter, RateStore
from kakehashi.platform.ratelimit_redis import RedisRateStore
from kakehashi.platform.retention import BodyStore, RetentionJob
from kakehashi.platform.storage.db import Database
from kakehashi.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Platform:
    """Keys, limits, ledger and retention on one database (and Redis, when configured)."""

    settings: Settings
    db: Database
    keys: KeyRepository
    key_store: DatabaseKeyStore
    ledger: LedgerSink
    rate_store: RateStore
    limiter: PlatformLimiter
    bodies: BodyStore
    retention: RetentionJob
    files: FileStore
    batches: BatchStore

    @classmethod
    def open(cls, settings: Settings, *, prices: PriceLookup = no_prices) -> Platform:
        """Connect to (and migrate) the configured database and build every part."""
        db = Database.open(settings.database_url, settings.data_dir)
        keys = KeyRepository(db)
        key_store = DatabaseKeyStore(
            keys,
            bootstrap=bootstrap_from_settings(settings),
            cache_seconds=settings.key_cache_seconds,
        )
        ledger = LedgerSink(
            db,
            prices=prices,
            on_written=key_store.add_spend,
            flush_seconds=settings.ledger_flush_seconds,
        )
        rate_store: RateStore
        if settings.redis_url:
            rate_store = RedisRateStore.from_url(settings.redis_url)
        else:
            rate_store = MemoryRateStore()
        limiter = PlatformLimiter(
            rate_store,
            keys=key_store.key,
            pending_spend=ledger.pending_spend,
            fail_open=settings.rate_limit_fail_open,
        )
        bodies = BodyStore(db, flush_seconds=settings.ledger_flush_seconds)
        files = FileStore(db, settings.data_dir / "files")
        batches = BatchStore(db, files)
        retention = RetentionJob(bodies, retention_days=settings.retention_days, files=files)
        logger.info(
            "platform: database %s, rate limits %s",
            db.describe(),
            "in Redis" if settings.redis_url else "in process",
        )
        return cls(
            settings,
            db,
            keys,
            key_store,
            ledger,
            rate_store,
            limiter,
            bodies,
            retention,
            files,
            batches,
        )

    async def start(self) -> None:
        """Start the ledger and body writers and the retention job."""
        self.ledger.start()
        self.bodies.start()
        self.retention.start()

    async def stop(self) -> None:
        """Stop the retention job, write everything queued, and close connections."""
        await self.retention.stop()
        await self.limiter.flush()
        self.ledger.close()
        self.bodies.close()
        if isinstance(self.rate_store, RedisRateStore):
            await self.rate_store.close()
        self.db.close()

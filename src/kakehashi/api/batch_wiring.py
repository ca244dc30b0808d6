"""The Files and Batches APIs in the app: the routes, and the runner that works batches through
this server's own gateway.

::

    tap = BatchUsageTap(platform.ledger)        # the gateway's usage sink, in front of the ledger
    service = build_service(..., usage=tap)
    batches = install_batches(app, platform, service, tap)
    await batches.start() ... await batches.stop()

The tap is needed because a batch line's ledger rows must be committed in the same transaction
as its result: through the ledger's own queue, a kill -9 between the two would lose the rows of
a line whose result was kept (a line run but never billed).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from kakehashi.api import batches, files
from kakehashi.api.deps import request_context
from kakehashi.api.inprocess import InProcessGateway
from kakehashi.errors import KakehashiError
from kakehashi.gateway.catalog import Catalog
from kakehashi.gateway.context import Principal, UsageRecord
from kakehashi.gateway.service import GatewayService
from kakehashi.platform.batches.runner import BatchRunner, RunnerConfig
from kakehashi.platform.batches.service import BatchService
from kakehashi.platform.batches.usage import BatchUsageTap
from kakehashi.platform.ledger import ModelPrices, batch_cost_usd
from kakehashi.platform.runtime import Platform
from kakehashi.settings import Settings


def catalog_prices(catalog: Catalog, model: str) -> ModelPrices | None:
    """The catalog's prices of ``model`` (None when it has none)."""
    entry = catalog.get(model)
    if entry is None:
        return None
    prices = ModelPrices(
        input=entry.input_price,
        output=entry.output_price,
        batch_input=entry.batch_input_price,
        batch_output=entry.batch_output_price,
    )
    return None if prices == ModelPrices() else prices


class BatchPricer:
    """What a batch line's usage record costs: the catalog's batch prices of its model, else
    half what the gateway priced it at."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def __call__(self, usage: UsageRecord) -> float:
        return batch_cost_usd(usage, catalog_prices(self.catalog, usage.model))


class ModelAccess:
    """Why a batch owner may not use a model (None: it may), as the gateway would answer."""

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    def __call__(self, principal: Principal, _endpoint: str, model: str) -> str | None:
        try:
            self.service.catalog.resolve(model, principal=principal, today=self.service.clock())
        except KakehashiError as error:
            return error.message
        return None


def runner_config(settings: Settings) -> RunnerConfig:
    """How hard this server works batches: by default twice ``max_num_seqs`` lines in flight,
    so the local engine's batch stays full while lines finish and new ones start."""
    in_flight = settings.batch_max_in_flight or 2 * settings.max_num_seqs
    return RunnerConfig(
        max_in_flight=in_flight,
        max_batches=settings.batch_max_batches,
        lease_seconds=settings.batch_lease_seconds,
    )


class Batches:
    """The app's files and batches, and the runner to start and stop with the server."""

    def __init__(self, service: BatchService, runner: BatchRunner) -> None:
        self.service = service
        self.runner = runner

    async def start(self) -> None:
        """Start taking batches (after the gateway's backends have started)."""
        self.runner.start()

    async def stop(self) -> None:
        """Stop working batches (before the backends stop): lines in flight are abandoned and
        run again wherever the batch is taken up next; finished ones are committed."""
        await self.runner.stop()


def install_batches(
    app: FastAPI,
    platform: Platform,
    service: GatewayService,
    tap: BatchUsageTap,
) -> Batches:
    """Add the Files and Batches routes (behind the usual authentication) to ``app`` and build
    the runner that sends batch lines through ``service`` with the owner's identity; ``tap`` is
    ``service``'s usage sink."""
    runner = BatchRunner(
        platform.batches,
        InProcessGateway(service),
        usage=tap,
        price=BatchPricer(service.catalog),
        check_model=ModelAccess(service),
        on_spend=platform.key_store.add_spend,
        owner_active=lambda principal: platform.key_store.is_active(principal.key_id),
        config=runner_config(platform.settings),
    )
    batch_service = BatchService(platform.files, platform.batches, runner)
    app.state.batch_service = batch_service
    authenticated = [Depends(request_context)]
    for module in (files, batches):
        app.include_router(module.router, dependencies=authenticated)
    return Batches(batch_service, runner)

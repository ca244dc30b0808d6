"""The catalog of public model ids: which deployments answer each, what it can do, what it
costs, when it retires, who may use it and what to fall back on.

Entries come from four places, in this order: the models the local backends serve (with their
aliases), the built-in migration table (:mod:`kakehashi.gateway.builtin`), the ids upstreams
list, then the configured ``[[models]]`` specs, which may add ids or change existing ones. An id
several upstreams list gets one deployment on each (replicas the gateway balances). Ids an
upstream serves by glob (``lab-*``) are not listed; they resolve on demand.

Every public name is an entry of its own (an alias copies its target), except *stable
aliases*: ``gpt-4`` names whichever snapshot (``gpt-4-0613``, ...) claims it with the latest
``stable_since`` that has arrived, so the alias upgrades itself on that date and responses carry
the snapshot's id, as OpenAI's do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from kakehashi.backends.base import Backend, ServedModel
from kakehashi.capabilities import EVERYTHING, Capability
from kakehashi.errors import ConflictError, ModelNotFoundError
from kakehashi.gateway.access import tiers_from
from kakehashi.gateway.context import Principal
from kakehashi.gateway.lifecycle import Lifecycle, Status, system_clock
from kakehashi.settings import DEFAULT_TIERS, ModelSpec


class CatalogError(ValueError):
    """The configured catalog is inconsistent (an unknown target, a missing capability)."""


class UpstreamRoutes(Backend, Protocol):
    """A backend that serves, besides the ids it lists, whatever ids its globs match."""

    def upstream_model(self, public_id: str) -> str | None:
        """The id the upstream knows ``public_id`` by, or None if it does not serve it."""
        ...


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model runs: a backend, and the id that backend knows the model by."""

    backend: Backend
    model: str

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the deployment across catalog entries (for balancing, breakers)."""
        return (self.backend.name, self.model)


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One public model id and everything the gateway knows about it.

    Prices are USD per 1M tokens; ``tiers=None`` lets every tier use the model. ``fallbacks``
    are public ids tried in order when every deployment of this one failed.
    """

    id: str
    deployments: tuple[Deployment, ...]
    created: int
    owned_by: str = "kakehashi"
    capabilities: frozenset[Capability] = frozenset()
    context_window: int | None = None
    input_price: float | None = None
    output_price: float | None = None
    batch_input_price: float | None = None  # None: half input_price
    batch_output_price: float | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    tiers: frozenset[str] | None = None
    alias_of: str | None = None
    serves: str | None = None  # the served model that answers, when not this id itself
    stable_alias: str | None = None
    stable_since: date | None = None
    dimensions: bool = False
    fallbacks: tuple[str, ...] = ()

    @property
    def backend(self) -> Backend:
        """The backend of the first deployment."""
        return self.deployments[0].backend

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a key's allow-list may use for this entry."""
        return tuple(n for n in (self.id, self.alias_of, self.stable_alias) if n)

    def status(self, today: date) -> Status:
        """The entry's lifecycle status on ``today``."""
        return self.lifecycle.status(today)


class Catalog:
    """Public model ids → entries, in the order they were added."""

    def __init__(self, *, tiers: Sequence[str] = DEFAULT_TIERS) -> None:
        self._entries: dict[str, CatalogEntry] = {}
        self._tiers = tuple(tiers)
        self._upstreams: list[UpstreamRoutes] = []
        self._created = int(time.time())

    @classmethod
    def from_backends(
        cls,
        backends: Iterable[Backend],
        specs: Iterable[ModelSpec] = (),
        *,
        builtin: Iterable[ModelSpec] = (),
        upstreams: Iterable[UpstreamRoutes] = (),
        tiers: Sequence[str] = DEFAULT_TIERS,
    ) -> Catalog:
        """A catalog of every model the local ``backends`` serve, then the ``builtin`` entries
        one of them can answer, then what the ``upstreams`` list, then the configured
        ``specs``."""
        catalog = cls(tiers=tiers)
        for backend in backends:
            served = list(backend.served_models())
            for model in served:
                catalog.add(model, backend, serves=served[0].id)
        for spec in builtin:
            if spec.id not in catalog._entries:
                catalog.apply(spec, required=False)
        for upstream in upstreams:
            catalog.add_upstream(upstream)
        for spec in specs:
            catalog.apply(spec)
        return catalog

    def add_upstream(self, upstream: UpstreamRoutes) -> None:
        """Register an upstream: each id it lists (one more deployment of an id another
        upstream lists), and its globs for ids resolved later."""
        self._upstreams.append(upstream)
        for model in upstream.served_models():
            deployment = Deployment(upstream, upstream.upstream_model(model.id) or model.id)
            existing = self._entries.get(model.id)
            if existing is None:
                self._entries[model.id] = _upstream_entry(model.id, (deployment,), model)
            elif existing.deployments and _all_upstream(existing, self._upstreams):
                replicas = (*existing.deployments, deployment)
                self._entries[model.id] = dataclasses.replace(existing, deployments=replicas)
            else:
                raise ConflictError(
                    f"The model id `{model.id}` is served locally and by upstream "
                    f"`{upstream.name}`; rename one of them."
                )

    def add(self, model: ServedModel, backend: Backend, *, serves: str | None = None) -> None:
        """Register a served model (an alias of ``serves`` if given and different); ids are
        unique across backends."""
        if model.id in self._entries:
            raise ConflictError(f"The model id `{model.id}` is served twice.")
        self._entries[model.id] = CatalogEntry(
            id=model.id,
            deployments=(Deployment(backend, serves or model.id),),
            created=model.created,
            owned_by=model.owned_by,
            capabilities=model.capabilities,
            context_window=model.context_window,
            serves=serves if serves != model.id else None,
        )

    def apply(self, spec: ModelSpec, *, required: bool = True) -> None:
        """Add the entry ``spec`` describes, or change the existing one of that id.

        A spec whose target cannot be found is an error when ``required``, else skipped (the
        built-in table names models for capabilities no backend may have).
        """
        existing = self._entries.get(spec.id)
        if existing is not None and spec.serves is None:
            start = existing
        else:
            base = self._target(spec, required)
            if base is None:
                return
            start = CatalogEntry(
                id=spec.id,
                deployments=base.deployments,
                created=base.created,
                owned_by=base.owned_by,
                capabilities=base.capabilities,
                context_window=base.context_window,
                dimensions=base.dimensions,
                serves=base.serves or base.id,
                fallbacks=base.fallbacks,
            )
        capabilities = start.capabilities
        if spec.capabilities is not None:
            capabilities = frozenset(spec.capabilities)
            if not capabilities <= frozenset(start.capabilities):
                missing = ", ".join(sorted(capabilities - start.capabilities))
                raise CatalogError(f"`{spec.id}`: its backend cannot do {missing}")
        tiers = frozenset(spec.tiers) if spec.tiers is not None else start.tiers
        if spec.min_tier is not None:
            tiers = tiers_from(self._tiers, spec.min_tier) & (tiers or frozenset(self._tiers))
        old = start.lifecycle
        entry = dataclasses.replace(
            start,
            owned_by=_pick(spec, "owned_by", start.owned_by),
            created=_pick(spec, "created", start.created),
            capabilities=capabilities,
            context_window=_pick(spec, "context_window", start.context_window),
            input_price=_pick(spec, "input_price", start.input_price),
            output_price=_pick(spec, "output_price", start.output_price),
            batch_input_price=_pick(spec, "batch_input_price", start.batch_input_price),
            batch_output_price=_pick(spec, "batch_output_price", start.batch_output_price),
            lifecycle=Lifecycle(
                deprecated_on=_pick(spec, "deprecated_on", old.deprecated_on),
                shutdown_on=_pick(spec, "shutdown_on", old.shutdown_on),
                replacement=_pick(spec, "replacement", old.replacement),
            ),
            tiers=tiers,
            stable_alias=_pick(spec, "stable_alias", start.stable_alias),
            stable_since=_pick(spec, "stable_since", start.stable_since),
            dimensions=_pick(spec, "dimensions", start.dimensions),
            fallbacks=tuple(spec.fallbacks) if spec.fallbacks is not None else start.fallbacks,
        )
        self._entries[spec.id] = entry
        for alias in spec.aliases:
            if alias in self._entries:
                raise CatalogError(f"alias `{alias}` of `{spec.id}` is already a model id")
            self._entries[alias] = dataclasses.replace(entry, id=alias, alias_of=spec.id)

    def _target(self, spec: ModelSpec, required: bool) -> CatalogEntry | None:
        """The entry whose backend will answer ``spec``."""
        if spec.serves is not None:
            target = self._entries.get(spec.serves) or self._routed(spec.serves)
            if target is None:
                raise CatalogError(f"`{spec.id}` serves `{spec.serves}`, which is not a model")
            return target
        wanted = frozenset(spec.capabilities or (Capability.CHAT,))
        for entry in self._entries.values():
            if entry.alias_of is None and wanted <= entry.capabilities:
                return entry
        if required:
            raise CatalogError(
                f"no served model can answer `{spec.id}` ({', '.join(sorted(wanted))}); "
                "name one with `serves`"
            )
        return None

    # -- lookups ---------------------------------------------------------------------------

    def get(self, model_id: str) -> CatalogEntry | None:
        """The entry of exactly ``model_id``, whatever its status and access."""
        return self._entries.get(model_id)

    def _routed(self, model_id: str) -> CatalogEntry | None:
        """An entry for ``model_id`` over every upstream whose globs match it, if any does."""
        deployments = []
        for upstream in self._upstreams:
            upstream_id = upstream.upstream_model(model_id)
            if upstream_id is not None:
                deployments.append(Deployment(upstream, upstream_id))
        if not deployments:
            return None
        return _upstream_entry(model_id, tuple(deployments), created=self._created)

    def resolve(
        self, model_id: str, *, principal: Principal, today: date | None = None
    ) -> CatalogEntry:
        """The entry that answers ``model_id`` for ``principal`` on ``today``.

        Raises :class:`ModelNotFoundError` (404) for unknown ids and for models the principal
        may not use (the same answer, so access does not reveal existence) and, with a message
        that names the replacement, for retired models.
        """
        day = today or system_clock()
        entry = (
            self._entries.get(model_id)
            or self._stable(model_id, principal, day)
            or self._routed(model_id)
        )
        if entry is None or not principal.may_use(entry.names, entry.tiers):
            raise ModelNotFoundError(model_id)
        if entry.status(day) is Status.RETIRED:
            raise ModelNotFoundError(model_id, message=entry.lifecycle.retired_message(model_id))
        return entry

    def _stable(self, alias: str, principal: Principal, today: date) -> CatalogEntry | None:
        """The newest snapshot ``alias`` points at on ``today`` that ``principal`` may use."""
        candidates = [
            e
            for e in self._entries.values()
            if e.stable_alias == alias
            and (e.stable_since is None or e.stable_since <= today)
            and e.status(today) is not Status.RETIRED
            and principal.may_use(e.names, e.tiers)
        ]
        return max(candidates, key=lambda e: e.stable_since or date.min, default=None)

    def visible(self, *, principal: Principal, today: date | None = None) -> list[str]:
        """The public ids ``principal`` may use on ``today`` (stable aliases after their
        snapshots), in catalog order."""
        day = today or system_clock()
        ids: list[str] = []
        for entry in self._entries.values():
            usable = principal.may_use(entry.names, entry.tiers)
            if entry.status(day) is not Status.RETIRED and usable:
                ids.append(entry.id)
        for alias in dict.fromkeys(e.stable_alias for e in self._entries.values()):
            if alias and alias not in self._entries and self._stable(alias, principal, day):
                ids.append(alias)
        return ids

    def entries(self) -> list[CatalogEntry]:
        """Every entry, in order (retired and restricted ones included)."""
        return list(self._entries.values())

    def stable_aliases(self) -> list[str]:
        """Every stable alias name that is not itself an entry."""
        names = dict.fromkeys(e.stable_alias for e in self._entries.values() if e.stable_alias)
        return [name for name in names if name not in self._entries]

    def backends(self) -> list[Backend]:
        """Each distinct backend once, in order (upstreams included)."""
        unique: dict[int, Backend] = {}
        for entry in self._entries.values():
            for deployment in entry.deployments:
                unique.setdefault(id(deployment.backend), deployment.backend)
        for upstream in self._upstreams:
            unique.setdefault(id(upstream), upstream)
        return list(unique.values())


def _upstream_entry(
    model_id: str,
    deployments: tuple[Deployment, ...],
    model: ServedModel | None = None,
    *,
    created: int = 0,
) -> CatalogEntry:
    """An entry served by upstreams: it may do anything the upstream does, and take
    ``dimensions`` (the upstream judges)."""
    return CatalogEntry(
        id=model_id,
        deployments=deployments,
        created=model.created if model else created,
        owned_by=model.owned_by if model else "upstream",
        capabilities=model.capabilities if model else EVERYTHING,
        context_window=model.context_window if model else None,
        dimensions=True,
    )


def _all_upstream(entry: CatalogEntry, upstreams: Sequence[UpstreamRoutes]) -> bool:
    ids = {id(u) for u in upstreams}
    return all(id(d.backend) in ids for d in entry.deployments)


def _pick(spec: ModelSpec, name: str, default: Any) -> Any:
    """``spec.name`` if the spec gives it (TOML has no null, so None means "not given")."""
    value = getattr(spec, name)
    return default if value is None else value

"""The catalog of public model ids (served names and aliases) and the backend behind each."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kakehashi.backends.base import Backend, ServedModel
from kakehashi.errors import ConflictError, ModelNotFoundError


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One public model id and the backend that answers it."""

    model: ServedModel
    backend: Backend

    @property
    def id(self) -> str:
        return self.model.id


class Catalog:
    """Public model ids → backends, in the order they were added."""

    def __init__(self) -> None:
        self._entries: dict[str, CatalogEntry] = {}

    @classmethod
    def from_backends(cls, backends: Iterable[Backend]) -> Catalog:
        """A catalog of every model each backend serves."""
        catalog = cls()
        for backend in backends:
            for model in backend.served_models():
                catalog.add(model, backend)
        return catalog

    def add(self, model: ServedModel, backend: Backend) -> None:
        """Register ``model.id``; ids are unique across backends."""
        if model.id in self._entries:
            raise ConflictError(f"The model id `{model.id}` is served twice.")
        self._entries[model.id] = CatalogEntry(model, backend)

    def resolve(self, model_id: str) -> CatalogEntry:
        """The entry for ``model_id``; raises :class:`ModelNotFoundError` (404)."""
        try:
            return self._entries[model_id]
        except KeyError:
            raise ModelNotFoundError(model_id) from None

    def entries(self) -> list[CatalogEntry]:
        """Every public model id, in order."""
        return list(self._entries.values())

    def backends(self) -> list[Backend]:
        """Each distinct backend once, in order."""
        unique: dict[int, Backend] = {}
        for entry in self._entries.values():
            unique.setdefault(id(entry.backend), entry.backend)
        return list(unique.values())

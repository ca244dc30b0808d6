"""Lifecycle, stable aliases, access and the built-in migration table, without HTTP."""

from __future__ import annotations

import tomllib
from datetime import date
from email.utils import parsedate_to_datetime
from importlib import resources
from pathlib import Path

import pytest

from kakehashi.backends.embedding import LocalEmbeddingBackend
from kakehashi.backends.fake import FakeBackend
from kakehashi.errors import ModelNotFoundError
from kakehashi.gateway.access import principal_for
from kakehashi.gateway.builtin import builtin_specs, migration_table, openai_name_specs
from kakehashi.gateway.catalog import Catalog, CatalogError
from kakehashi.gateway.context import OPEN_ACCESS, Principal
from kakehashi.gateway.lifecycle import Lifecycle, Status
from kakehashi.settings import KeySpec, ModelSpec, Settings

DEPRECATED, SHUTDOWN = date(2024, 3, 1), date(2024, 6, 1)
LIFE = Lifecycle(deprecated_on=DEPRECATED, shutdown_on=SHUTDOWN, replacement="new-model")


def _embedder() -> LocalEmbeddingBackend:
    # Never started: these tests only look at the catalog.
    return LocalEmbeddingBackend(lambda: None, model_ids=["emb", "text-embedding-ada-002"])  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("today", "status"),
    [
        (date(2024, 2, 29), Status.ACTIVE),
        (DEPRECATED, Status.DEPRECATED),
        (date(2024, 5, 31), Status.DEPRECATED),
        (SHUTDOWN, Status.RETIRED),
        (date(2030, 1, 1), Status.RETIRED),
    ],
)
def test_status_at_each_boundary(today: date, status: Status) -> None:
    assert LIFE.status(today) is status


def test_headers_only_while_deprecated() -> None:
    assert LIFE.headers(date(2024, 2, 29)) == {}
    assert LIFE.headers(SHUTDOWN) == {}
    headers = LIFE.headers(date(2024, 4, 1))
    assert headers["Deprecation"] == "@1709251200"  # 2024-03-01T00:00:00Z (RFC 9745)
    sunset = parsedate_to_datetime(headers["Sunset"])  # an HTTP-date (RFC 8594)
    assert headers["Sunset"] == "Sat, 01 Jun 2024 00:00:00 GMT"
    assert sunset.date() == SHUTDOWN
    assert headers["Link"] == '</v1/models/new-model>; rel="successor-version"'
    assert LIFE.describe(date(2024, 4, 1)) == "deprecated until 2024-06-01 → new-model"
    assert LIFE.describe(SHUTDOWN) == "retired → new-model"
    assert LIFE.describe(date(2024, 1, 1)) == "active"


def test_retired_model_is_404_naming_the_replacement() -> None:
    catalog = Catalog.from_backends(
        [FakeBackend(["local"])],
        [ModelSpec(id="old", deprecated_on=DEPRECATED, shutdown_on=SHUTDOWN, replacement="local")],
    )
    assert catalog.resolve("old", principal=OPEN_ACCESS, today=date(2024, 5, 31)).id == "old"
    with pytest.raises(ModelNotFoundError) as caught:
        catalog.resolve("old", principal=OPEN_ACCESS, today=SHUTDOWN)
    assert caught.value.code == "model_not_found" and caught.value.status_code == 404
    assert caught.value.message == (
        "The model `old` has been deprecated and was shut down on 2024-06-01; use `local` instead."
    )
    assert catalog.visible(principal=OPEN_ACCESS, today=date(2024, 5, 31)) == ["local", "old"]
    assert catalog.visible(principal=OPEN_ACCESS, today=SHUTDOWN) == ["local"]


def test_stable_alias_upgrades_to_its_successor_on_the_date() -> None:
    snapshots = [
        ModelSpec(id="gpt-x-0301", stable_alias="gpt-x", stable_since=date(2023, 3, 1)),
        ModelSpec(id="gpt-x-0613", stable_alias="gpt-x", stable_since=date(2023, 6, 27)),
    ]
    catalog = Catalog.from_backends([FakeBackend(["local"])], snapshots)
    assert (
        catalog.resolve("gpt-x", principal=OPEN_ACCESS, today=date(2023, 6, 26)).id == "gpt-x-0301"
    )
    assert (
        catalog.resolve("gpt-x", principal=OPEN_ACCESS, today=date(2023, 6, 27)).id == "gpt-x-0613"
    )
    with pytest.raises(ModelNotFoundError):  # before the first snapshot, the alias is unknown
        catalog.resolve("gpt-x", principal=OPEN_ACCESS, today=date(2023, 2, 1))
    assert catalog.visible(principal=OPEN_ACCESS, today=date(2023, 7, 1)) == [
        "local",
        "gpt-x-0301",
        "gpt-x-0613",
        "gpt-x",
    ]
    # A retired snapshot stops being a target; the alias falls back to the one still served.
    retiring = ModelSpec(id="gpt-x-0613", shutdown_on=date(2024, 1, 1))
    catalog.apply(retiring)
    assert (
        catalog.resolve("gpt-x", principal=OPEN_ACCESS, today=date(2024, 1, 2)).id == "gpt-x-0301"
    )


def test_tiers_and_allow_lists() -> None:
    catalog = Catalog.from_backends(
        [FakeBackend(["local"])],
        [ModelSpec(id="gpt-4", serves="local", min_tier="tier-1", aliases=("gpt-4-latest",))],
    )
    free = Principal(key_id="free", label="free", tier="free")
    paid = Principal(key_id="paid", label="paid", tier="tier-2")
    listed = principal_for(KeySpec(key="sk-x", tier="tier-5", models=("gpt-4-latest",)))
    day = date(2025, 1, 1)
    assert catalog.visible(principal=free, today=day) == ["local"]
    assert catalog.visible(principal=paid, today=day) == ["local", "gpt-4", "gpt-4-latest"]
    assert catalog.visible(principal=listed, today=day) == ["gpt-4-latest"]
    assert catalog.visible(principal=OPEN_ACCESS, today=day) == ["local", "gpt-4", "gpt-4-latest"]
    for caller, model in [(free, "gpt-4"), (free, "gpt-4-latest"), (listed, "local")]:
        with pytest.raises(ModelNotFoundError) as caught:
            catalog.resolve(model, principal=caller, today=day)
        # exactly what an unknown model gets
        assert caught.value.message == ModelNotFoundError(model).message
    assert (
        catalog.resolve("gpt-4", principal=paid, today=day).backend is catalog.get("local").backend
    )


def test_key_spec_parsing_and_settings_validation() -> None:
    assert KeySpec.parse("sk-abc:tier-1") == KeySpec(key="sk-abc", tier="tier-1")
    assert KeySpec.parse("sk-abc") == KeySpec(key="sk-abc")
    settings = Settings(api_keys=["sk-a:tier-2", "sk-b"], keys=[{"key": "sk-c", "tier": "free"}])
    assert [(k.key, k.tier) for k in settings.all_keys()] == [
        ("sk-c", "free"),
        ("sk-a", "tier-2"),
        ("sk-b", None),
    ]
    assert settings.auth_enabled
    with pytest.raises(ValueError, match="unknown tier"):
        Settings(api_keys=["sk-a:platinum"])


def test_configuration_errors_are_reported() -> None:
    backends = [FakeBackend(["local"])]
    with pytest.raises(CatalogError, match="not a model"):
        Catalog.from_backends(backends, [ModelSpec(id="x", serves="nowhere")])
    with pytest.raises(CatalogError, match="no served model can answer"):
        Catalog.from_backends(backends, [ModelSpec(id="x", capabilities=("embeddings",))])
    with pytest.raises(CatalogError, match="cannot do embeddings"):
        Catalog.from_backends(
            backends, [ModelSpec(id="x", serves="local", capabilities=("embeddings",))]
        )


def test_migration_table_round_trips() -> None:
    table = migration_table()
    raw = tomllib.loads(
        resources.files("kakehashi.gateway").joinpath("data", "openai_2024_01_04.toml").read_text()
    )
    assert [row.to_dict() for row in table] == raw["models"]
    assert len(table) == 29
    assert {row.endpoint for row in table} == {"completions", "embeddings", "edits"}
    assert all(row.shutdown_on == date(2024, 1, 4) for row in table)
    assert all(row.announced_on == date(2023, 7, 6) for row in table)
    replacements = {row.model: row.replacement for row in table}
    assert replacements["text-davinci-003"] == "gpt-3.5-turbo-instruct"
    assert replacements["ada"] == "babbage-002"
    assert replacements["curie"] == "davinci-002"
    assert replacements["text-search-ada-doc-001"] == "text-embedding-ada-002"
    assert replacements["code-davinci-edit-001"] == "gpt-4"

    # Each row becomes a catalog entry served by a backend with its endpoint, retiring on the
    # published day (edit models excepted: /v1/edits keeps them).
    catalog = Catalog.from_backends([FakeBackend(["local"]), _embedder()], builtin=builtin_specs())
    for row in table:
        entry = catalog.get(row.model)
        assert entry is not None, row.model
        assert entry.capabilities == {row.endpoint}
        assert entry.serves == ("emb" if row.endpoint == "embeddings" else "local")
        assert entry.lifecycle.replacement == row.replacement
        assert entry.status(date(2023, 7, 5)) is Status.ACTIVE
        assert entry.status(date(2024, 1, 3)) is Status.DEPRECATED
        expected = Status.DEPRECATED if row.endpoint == "edits" else Status.RETIRED
        assert entry.status(date(2024, 1, 4)) is expected
        if row.price_per_1k is not None:
            assert entry.input_price == pytest.approx(row.price_per_1k * 1000)


def test_builtin_rows_without_a_backend_are_skipped() -> None:
    catalog = Catalog.from_backends([FakeBackend(["local"])], builtin=builtin_specs())
    assert catalog.get("text-davinci-003") is not None
    assert catalog.get("text-similarity-ada-001") is None  # nothing serves embeddings


def test_settings_file_env_and_flags_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "kakehashi.toml"
    config.write_text(
        'tiers = ["free", "gold"]\napi_keys = ["sk-from-file"]\nport = 9000\n'
        '[[keys]]\nkey = "sk-table"\ntier = "gold"\nmodels = ["m"]\n'
        '[[models]]\nid = "m"\nmin_tier = "gold"\nshutdown_on = 2025-01-01\n'
    )
    from_file = Settings.load(config)
    assert (from_file.port, from_file.api_keys, from_file.tiers) == (
        9000,
        ["sk-from-file"],
        ["free", "gold"],
    )
    assert from_file.keys == [KeySpec(key="sk-table", tier="gold", models=("m",))]
    assert from_file.models[0].shutdown_on == date(2025, 1, 1)

    monkeypatch.setenv("KAKEHASHI_API_KEYS", "sk-env:gold")
    monkeypatch.setenv("KAKEHASHI_PORT", "9100")
    monkeypatch.setenv("KAKEHASHI_CONFIG", str(config))
    layered = Settings.load(
        port=9200
    )  # the file from KAKEHASHI_CONFIG, env over it, flags over both
    assert (layered.port, layered.api_keys, layered.tiers) == (
        9200,
        ["sk-env:gold"],
        ["free", "gold"],
    )


def test_openai_names_go_to_the_served_chat_model() -> None:
    chat, embedder = FakeBackend(["local-chat"]), _embedder()
    catalog = Catalog.from_backends([chat, embedder], builtin=openai_name_specs())
    for name in ("gpt-3.5-turbo", "gpt-4", "gpt-4.1", "gpt-4o", "chatgpt-4o-latest"):
        entry = catalog.resolve(name, principal=OPEN_ACCESS)
        assert entry.backend is chat and entry.serves == "local-chat"
        assert entry.capabilities == frozenset({"chat"})
    assert catalog.resolve(
        "gpt-3.5-turbo-instruct", principal=OPEN_ACCESS
    ).capabilities == frozenset({"completions"})
    # With no chat model served, the names are not in the catalog at all.
    alone = Catalog.from_backends([embedder], builtin=openai_name_specs())
    with pytest.raises(ModelNotFoundError):
        alone.resolve("gpt-4", principal=OPEN_ACCESS)


def test_configured_models_win_over_the_openai_names() -> None:
    configured = [
        ModelSpec(id="gpt-4-0613", serves="local-chat", stable_alias="gpt-4"),
        ModelSpec(id="team-model", serves="local-chat", aliases=("gpt-4o",)),
        ModelSpec(id="gpt-4.1", serves="local-chat", min_tier="tier-1"),
    ]
    defaults = openai_name_specs(configured)
    assert {"gpt-4", "gpt-4o", "gpt-4.1"}.isdisjoint(spec.id for spec in defaults)
    catalog = Catalog.from_backends([FakeBackend(["local-chat"])], configured, builtin=defaults)
    assert (
        catalog.resolve("gpt-4", principal=OPEN_ACCESS).id == "gpt-4-0613"
    )  # the stable alias, not a default
    assert catalog.resolve("gpt-4o", principal=OPEN_ACCESS).alias_of == "team-model"
    assert catalog.get("gpt-4.1").tiers is not None  # the configured access rule holds
    free = principal_for(KeySpec(key="sk-free", tier="free"))
    with pytest.raises(ModelNotFoundError):
        catalog.resolve("gpt-4.1", principal=free)
    assert catalog.resolve("gpt-3.5-turbo", principal=free).serves == "local-chat"

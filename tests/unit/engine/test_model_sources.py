"""``--model`` references: Ollama's and LM Studio's stores, laid out here as those apps lay
them out, and the built-in names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kakehashi.engine.models.sources import (
    ModelSourceError,
    lmstudio_store,
    locate_model,
    ollama_store,
    public_name,
    resolve_model_source,
)
from support.gguf_files import lay_out_lmstudio, lay_out_ollama

GGUF = b"GGUF" + bytes(60)  # resolution only looks at paths, never inside the file


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory, with no Ollama or LM Studio settings in the environment."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    return folder


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(GGUF)
    return path


# -- Ollama ----------------------------------------------------------------------------------


def test_ollama_default_store_and_tags(home: Path, gguf_file: Path) -> None:
    store = home / ".ollama" / "models"
    latest = lay_out_ollama(store, "smollm2", "latest", gguf_file)
    tagged = lay_out_ollama(store, "qwen2.5", "0.5b", gguf_file)
    assert ollama_store() == store
    assert resolve_model_source("ollama:smollm2") == latest
    assert resolve_model_source("ollama:smollm2:latest") == latest
    assert resolve_model_source("ollama:qwen2.5:0.5b") == tagged
    assert latest.name.startswith("sha256-") and latest.read_bytes() == GGUF


def test_ollama_models_env_and_namespaces(
    home: Path, gguf_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    blob = lay_out_ollama(store, "tiny", "q4", gguf_file, namespace="someone")
    assert ollama_store() == store
    assert resolve_model_source("ollama:someone/tiny:q4") == blob
    assert resolve_model_source("ollama:registry.ollama.ai/someone/tiny:q4") == blob
    with pytest.raises(ModelSourceError, match=r"no model someone/tiny:latest .*ollama pull"):
        resolve_model_source("ollama:someone/tiny")


def test_ollama_errors(home: Path, gguf_file: Path) -> None:
    store = home / ".ollama" / "models"
    with pytest.raises(ModelSourceError, match=r"Ollama has no model llama3.2:1b in .*\.ollama"):
        resolve_model_source("ollama:llama3.2:1b")
    for bad in ("ollama:", "ollama:a/b/c/d", "ollama:model:", "ollama:../x"):
        with pytest.raises(ModelSourceError, match="not an Ollama model name"):
            resolve_model_source(bad)
    blob = lay_out_ollama(store, "broken", "latest", gguf_file)
    blob.unlink()
    with pytest.raises(ModelSourceError, match="model layer of Ollama's broken:latest is missing"):
        resolve_model_source("ollama:broken")
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    manifest.write_text(json.dumps({"layers": [{"mediaType": "x", "digest": "sha256:1"}]}))
    with pytest.raises(ModelSourceError, match="lists no model layer"):
        resolve_model_source("ollama:broken")
    manifest.write_text("{not json")
    with pytest.raises(ModelSourceError, match="cannot read the Ollama manifest"):
        resolve_model_source("ollama:broken")


# -- LM Studio -------------------------------------------------------------------------------


def test_lmstudio_default_home(home: Path, gguf_file: Path, tmp_path: Path) -> None:
    models = home / ".lmstudio" / "models"
    folder = lay_out_lmstudio(models, "lmstudio-community", "SmolLM2-GGUF", gguf_file)
    assert lmstudio_store() == models
    assert resolve_model_source("lmstudio:lmstudio-community/SmolLM2-GGUF") == folder / "model.gguf"
    other = tmp_path / "model-Q8_0.gguf"
    other.write_bytes(GGUF)
    lay_out_lmstudio(models, "lmstudio-community", "SmolLM2-GGUF", other)
    with pytest.raises(ModelSourceError, match=r"holds model-Q8_0\.gguf, model\.gguf; name one"):
        resolve_model_source("lmstudio:lmstudio-community/SmolLM2-GGUF")
    named = "lmstudio:lmstudio-community/SmolLM2-GGUF/model-Q8_0.gguf"
    assert resolve_model_source(named) == folder / "model-Q8_0.gguf"
    with pytest.raises(ModelSourceError, match=r"has no file missing\.gguf"):
        resolve_model_source("lmstudio:lmstudio-community/SmolLM2-GGUF/missing.gguf")
    with pytest.raises(ModelSourceError, match="LM Studio has no model nobody/nothing in"):
        resolve_model_source("lmstudio:nobody/nothing")
    with pytest.raises(ModelSourceError, match=r"expected PUBLISHER/REPO\[/FILE\]"):
        resolve_model_source("lmstudio:just-a-name")


def test_lmstudio_pointer_cache_home_and_downloads_folder(home: Path, tmp_path: Path) -> None:
    (home / ".cache" / "lm-studio").mkdir(parents=True)
    assert lmstudio_store() == home / ".cache" / "lm-studio" / "models"  # the old location
    moved = tmp_path / "lmstudio-home"
    moved.mkdir()
    (home / ".lmstudio-home-pointer").write_text(f"{moved}\n")
    assert lmstudio_store() == moved / "models"
    downloads = tmp_path / "big-disk" / "models"
    (moved / "settings.json").write_text(json.dumps({"downloadsFolder": str(downloads)}))
    assert lmstudio_store() == downloads
    (moved / "settings.json").write_text("{broken")
    assert lmstudio_store() == moved / "models"


# -- names -----------------------------------------------------------------------------------


def test_public_names(gguf_file: Path, tmp_path: Path) -> None:
    assert public_name(str(gguf_file)) == "model"
    assert public_name(str(tmp_path)) == tmp_path.name
    assert public_name("ollama:qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert public_name("lmstudio:org/repo/file.gguf") == "org/repo/file.gguf"
    assert public_name("Org/Model") == "Org/Model"


def test_tiny_random_is_made_in_the_data_dir(tmp_path: Path) -> None:
    made = locate_model("tiny-random", data_dir=tmp_path)
    assert made == tmp_path / "models" / "tiny-random-v1" and (made / "config.json").is_file()

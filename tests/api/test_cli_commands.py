"""The ``kakehashi`` command line (what does not need a running server)."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert missing.exit_code == 1
    assert "cannot load model" in missing.output
    bad_device = runner.invoke(app, ["serve", "--device", "gpu"])
    assert bad_device.exit_code == 2
    if not torch.cuda.is_available():
        no_gpu = runner.invoke(app, ["serve", "--device", "cuda"])
        assert no_gpu.exit_code == 1
        assert "torch sees no CUDA GPU" in no_gpu.output

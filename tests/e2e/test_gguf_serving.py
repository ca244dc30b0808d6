"""A GGUF model served from Ollama's store answers exactly as the same weights do from their
Hugging Face directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gguf import GGMLQuantizationType

from e2e.common import LLAMA_MODEL, MAX_MODEL_LEN, MESSAGES, sdk_client
from support.gguf_files import lay_out_ollama, write_gguf
from support.server import ServerProcess, run_server


@pytest.fixture(scope="module")
def ollama_server(
    tiny_llama_dir: Path, server_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("ollama")
    gguf = write_gguf(tiny_llama_dir, folder / "tiny.gguf", GGMLQuantizationType.F32)
    lay_out_ollama(folder / "store", "tiny", "f32", gguf)
    with run_server(
        "ollama:tiny:f32",
        data_dir=server_data_dir,
        max_model_len=MAX_MODEL_LEN,
        env={"OLLAMA_MODELS": str(folder / "store")},
    ) as server:
        yield server


def test_same_answers_as_the_safetensors_directory(
    ollama_server: ServerProcess, client: openai.OpenAI
) -> None:
    with sdk_client(ollama_server) as from_gguf:
        assert next(m.id for m in from_gguf.models.list()) == "tiny:f32"
        for model in ("tiny:f32", "gpt-4o"):
            ours = from_gguf.chat.completions.create(
                model=model, messages=MESSAGES, temperature=0, max_tokens=16, logprobs=True
            )
            reference = client.chat.completions.create(
                model=LLAMA_MODEL, messages=MESSAGES, temperature=0, max_tokens=16, logprobs=True
            )
            assert ours.choices[0].message.content == reference.choices[0].message.content
            assert ours.usage.prompt_tokens == reference.usage.prompt_tokens
            for mine, theirs in zip(
                ours.choices[0].logprobs.content,
                reference.choices[0].logprobs.content,
                strict=True,
            ):
                assert mine.token == theirs.token
                assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-4)
        legacy = from_gguf.completions.create(
            model="tiny:f32", prompt="The bridge", max_tokens=8, temperature=0
        )
        expected = client.completions.create(
            model=LLAMA_MODEL, prompt="The bridge", max_tokens=8, temperature=0
        )
        assert legacy.choices[0].text == expected.choices[0].text

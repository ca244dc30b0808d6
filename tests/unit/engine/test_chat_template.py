"""Chat templates rendered exactly as transformers renders them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kakehashi.engine.chat_template import ChatTemplate, ChatTemplateError
from kakehashi.errors import InvalidRequestError

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    [
        {"role": "system", "content": "You answer in Japanese."},
        {"role": "user", "content": "What is a bridge?"},
        {"role": "assistant", "content": "橋は川の両岸をつなぐものです。"},
        {"role": "user", "content": "  もっと詳しく教えてください 🌉  "},
    ],
    [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你的？"},
        {"role": "user", "content": "Line one\nline two\n\n{% not jinja %}"},
    ],
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "天気を調べる",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_qwen2_dir: Path) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_qwen2_dir


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(
    model_dir: Path, conversation: list[dict], add_generation_prompt: bool
) -> None:
    hf = AutoTokenizer.from_pretrained(model_dir)
    expected = hf.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ours = ChatTemplate.from_dir(model_dir).render(
        conversation, add_generation_prompt=add_generation_prompt
    )
    assert ours == expected


def test_tools_render_like_transformers_and_keep_non_ascii(model_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(model_dir)
    messages = CONVERSATIONS[1]
    expected = hf.apply_chat_template(
        messages, tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    ours = ChatTemplate.from_dir(model_dir).render(messages, tools=TOOLS)
    assert ours == expected
    assert "天気を調べる" in ours and "get_weather" in ours


def test_text_parts_are_joined(tiny_qwen2_dir: Path) -> None:
    template = ChatTemplate.from_dir(tiny_qwen2_dir)
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "世界"}]
    as_parts = template.render([{"role": "user", "content": parts}])
    as_string = template.render([{"role": "user", "content": "Hello, 世界"}])
    assert as_parts == as_string
    assert "<|im_start|>user\nHello, 世界<|im_end|>" in as_parts


def test_bos_token_is_available_to_the_template(tiny_llama_dir: Path) -> None:
    rendered = ChatTemplate.from_dir(tiny_llama_dir).render([{"role": "user", "content": "hi"}])
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>user")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_raise_exception_becomes_chat_template_error(tiny_qwen2_dir: Path) -> None:
    template = ChatTemplate.from_dir(tiny_qwen2_dir)
    with pytest.raises(ChatTemplateError, match="Unknown role: wizard") as info:
        template.render([{"role": "wizard", "content": "abracadabra"}])
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidRequestError)


def _write_config(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def test_missing_template_is_a_clear_error(tmp_path: Path) -> None:
    model_dir = _write_config(tmp_path, {"eos_token": "</s>"})
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate.from_dir(model_dir)


def test_named_templates_use_default(tmp_path: Path) -> None:
    config = {
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{% for m in messages %}[{{ m.content }}]{% endfor %}"},
        ]
    }
    template = ChatTemplate.from_dir(_write_config(tmp_path, config))
    assert template.render([{"role": "user", "content": "x"}]) == "[x]"
    only_tools = _write_config(tmp_path / "b", {"chat_template": [config["chat_template"][0]]})
    with pytest.raises(ChatTemplateError, match="default"):
        ChatTemplate.from_dir(only_tools)


def test_separate_jinja_file_wins(tmp_path: Path) -> None:
    model_dir = _write_config(tmp_path, {"chat_template": "from config"})
    (model_dir / "chat_template.jinja").write_text(
        "{{ messages | length }} {{ strftime_now('%Y') | length }} {{ messages[0] | tojson }}",
        encoding="utf-8",
    )
    rendered = ChatTemplate.from_dir(model_dir).render([{"role": "user", "content": "é<b>"}])
    assert rendered == '1 4 {"role": "user", "content": "é<b>"}'


def test_sandbox_blocks_unsafe_access(tmp_path: Path) -> None:
    source = "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}"
    template = ChatTemplate.from_dir(_write_config(tmp_path, {"chat_template": source}))
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])


def test_broken_template_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate.from_dir(_write_config(tmp_path, {"chat_template": "{% for %}"}))

"""Reading batch input files: good lines, and OpenAI's errors.data[].line for bad ones."""

from __future__ import annotations

import json

from kakehashi.platform.batches.validate import InputReader

CHAT = "/v1/chat/completions"


def _line(custom_id: str, model: str = "m", **changes: object) -> bytes:
    data: dict[str, object] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    }
    data.update(changes)
    return json.dumps(data).encode()


def _read(content: bytes, **options: object) -> tuple[InputReader, list[object]]:
    reader = InputReader(CHAT, **options)  # type: ignore[arg-type]
    # chunks that cut lines anywhere
    chunks = [content[i : i + 7] for i in range(0, len(content), 7)]
    return reader, list(reader.read(chunks))


def test_good_lines_in_order_with_mixed_models_and_blank_lines() -> None:
    content = b"\n".join([_line("a", "m1"), b"", _line("b", "m2"), b""])
    reader, lines = _read(content)
    assert reader.ok and reader.errors == []
    assert [(x.line_no, x.custom_id, x.model) for x in lines] == [(1, "a", "m1"), (3, "b", "m2")]  # type: ignore[attr-defined]
    assert json.loads(lines[0].body)["model"] == "m1"  # type: ignore[attr-defined]
    assert reader.model is None and reader.line_count == 2


def test_every_bad_line_is_named() -> None:
    content = b"\n".join(
        [
            _line("a"),
            b"{not json",
            _line("a"),
            _line("c", url="/v1/embeddings"),
            _line("d", method="GET"),
            json.dumps({"custom_id": "e", "method": "POST", "url": CHAT}).encode(),
            _line("f", body={"messages": []}),
            _line("g", model="forbidden"),
            _line("h", body={"model": "m", "stream": True}),
            b"[1, 2]",
        ]
    )

    def check(model: str) -> str | None:
        return f"The model `{model}` does not exist." if model == "forbidden" else None

    reader, lines = _read(content, check_model=check)
    assert not reader.ok and [x.custom_id for x in lines] == ["a"]  # type: ignore[attr-defined]
    found = [(e.line, e.code, e.param) for e in reader.errors]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "invalid_url", "url"),
        (5, "invalid_method", "method"),
        (6, "missing_required_parameter", "body"),
        (7, "missing_required_parameter", "body.model"),
        (8, "model_not_found", "body.model"),
        (9, "invalid_value", "body.stream"),
        (10, "invalid_json_line", None),
    ]


def test_empty_and_oversized_files() -> None:
    reader, _ = _read(b"\n\n")
    assert [e.code for e in reader.errors] == ["empty_file"]
    reader, _ = _read(b"\n".join(_line(str(i)) for i in range(4)), max_lines=3)
    assert [e.code for e in reader.errors] == ["too_many_requests"]

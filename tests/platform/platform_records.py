"""Usage records for the platform tests."""

from __future__ import annotations

from kakehashi.gateway.context import UsageRecord


def usage(n: int, *, key_id: str = "key_a", model: str = "gpt-4", **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": f"req_{n}",
        "attempt": 0,
        "key_id": key_id,
        "model": model,
        "backend": "local",
        "endpoint": "chat.completions",
        "started_at": 1_750_000_000.0 + n,
        "latency": 0.05,
        "status": "success",
        "prompt_tokens": 100,
        "completion_tokens": 10,
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]

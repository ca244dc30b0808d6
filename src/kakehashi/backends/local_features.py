"""What the local engine cannot do: requests that need it get a clear 400 rather than an answer
that silently ignores part of the request. (An upstream receives such requests intact.)"""

from __future__ import annotations

from typing import Any

from kakehashi.errors import InvalidRequestError
from kakehashi.wire.chat import ChatCompletionRequest


def refuse_unsupported_chat(request: ChatCompletionRequest) -> None:
    """Raise 400 for content parts other than text, a response format other than text, and
    audio output: the local engine has no vision, no constrained decoding and no speech."""
    for index, message in enumerate(request.messages):
        kinds = message.non_text_parts
        if kinds:
            raise InvalidRequestError(
                f"Invalid content part in 'messages[{index}].content': type '{kinds[0]}' is not "
                f"supported by `{request.model}`, which accepts only text parts.",
                param=f"messages[{index}].content",
                code="invalid_value",
            )
    extra: dict[str, Any] = request.model_extra or {}
    response_format = extra.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            raise InvalidRequestError(
                f"Invalid 'response_format': `{request.model}` cannot guarantee "
                f"{kind or 'that'} output; only {{'type': 'text'}} is supported.",
                param="response_format",
                code="unsupported_value",
            )
    modalities = extra.get("modalities")
    if (isinstance(modalities, list) and "audio" in modalities) or extra.get("audio") is not None:
        raise InvalidRequestError(
            f"`{request.model}` cannot produce audio; leave out 'audio' and 'modalities'.",
            param="modalities" if extra.get("audio") is None else "audio",
            code="unsupported_value",
        )

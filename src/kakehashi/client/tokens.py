"""Token counts and the context window, asked of the server.

Counts come from the server's ``/tokenize`` (kakehashi and vLLM answer it under the base URL or
at the root), which says whether its count is exact. A server without one gets the same
estimate kakehashi's gateway gives for upstreams, and :attr:`TokenCounter.exact` says so. The
context window comes from the model's ``/v1/models`` card (``context_window``,
``max_model_len`` or ``context_length``, whichever the server writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kakehashi.client.errors import from_openai
from kakehashi.token_estimate import estimate_messages, estimate_text

if TYPE_CHECKING:
    import openai

WINDOW_FIELDS = ("context_window", "max_model_len", "context_length")


class TokenCounter:
    """Counts tokens of text and conversations for one model of one server."""

    def __init__(self, sdk: openai.OpenAI, model: str) -> None:
        self._sdk = sdk
        self.model = model
        self._paths: list[str] | None = None  # where /tokenize answered; [] once none did
        self.exact: bool | None = None  # unknown until the first count

    def count_messages(self, messages: Sequence[dict[str, Any]]) -> int:
        """The prompt tokens ``messages`` make, as the chat endpoint counts them."""
        answer = self._tokenize({"messages": list(messages)})
        if answer is None:
            return estimate_messages(str(m.get("content") or "") for m in messages)
        return int(answer["count"])

    def count_text(self, text: str) -> int:
        """The tokens of ``text`` alone (no special tokens)."""
        answer = self._tokenize({"prompt": text, "add_special_tokens": False})
        return estimate_text(text) if answer is None else int(answer["count"])

    def context_window(self) -> int | None:
        """The model's context window from its card, if the server gives one."""
        import openai

        try:
            card = self._sdk.models.retrieve(self.model)
        except openai.NotFoundError as exc:
            if getattr(exc, "code", None) == "model_not_found":
                raise from_openai(exc) from None
            return None  # a server without GET /v1/models/{id}
        except openai.OpenAIError as exc:
            raise from_openai(exc) from None
        extra = card.model_extra or {}
        for name in WINDOW_FIELDS:
            value = extra.get(name)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The server's answer to ``/tokenize``, or ``None`` where it has none."""
        import openai

        if self._paths is None:
            base = str(self._sdk.base_url).rstrip("/")
            root = base.split("/", 3)
            self._paths = [f"{base}/tokenize", "/".join(root[:3]) + "/tokenize"]
        for path in list(self._paths):
            try:
                answer = self._sdk.post(path, cast_to=object, body={"model": self.model, **body})
            except openai.NotFoundError as exc:
                if getattr(exc, "code", None) == "model_not_found":
                    raise from_openai(exc) from None
                self._paths.remove(path)  # no such route here
                continue
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if "messages" in body:  # a tokenizer that takes only text (llama-server)
                    self._paths.remove(path)
                    continue
                raise from_openai(exc) from None
            except openai.APIStatusError as exc:
                if exc.status_code == 405:
                    self._paths.remove(path)
                    continue
                raise from_openai(exc) from None
            except openai.OpenAIError as exc:
                raise from_openai(exc) from None
            if isinstance(answer, dict) and isinstance(answer.get("count"), int):
                self._paths = [path]
                self.exact = bool(answer.get("exact", True))
                return answer
            self._paths.remove(path)  # LM Studio answers unknown routes with 200 and an error
        self.exact = False
        return None

"""kakehashi: a self-hosted, OpenAI-compatible LLM API platform.

The public API is what ``__all__`` lists; everything else may change between releases.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from kakehashi.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    InvalidRequestError,
    KakehashiError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from kakehashi.settings import Settings

if TYPE_CHECKING:
    from kakehashi.api.app import create_app

try:
    __version__ = version("kakehashi")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AuthenticationError",
    "ContextLengthExceededError",
    "InvalidRequestError",
    "KakehashiError",
    "ModelNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "Settings",
    "__version__",
    "create_app",
]


def __getattr__(name: str) -> Any:
    # create_app pulls in FastAPI and the backends; import it only when asked for.
    if name == "create_app":
        from kakehashi.api.app import create_app

        return create_app
    raise AttributeError(f"module 'kakehashi' has no attribute {name!r}")

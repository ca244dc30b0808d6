"""kakehashi: a self-hosted, OpenAI-compatible LLM API platform.

The public API is what ``__all__`` lists; everything else may change between releases.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from kakehashi.api.app import create_app
    from kakehashi.settings import Settings

    __version__: str

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
    # Imported when first asked for: create_app pulls in FastAPI and the backends, Settings
    # pydantic-settings, and reading the version importlib.metadata. The client kit and the
    # command line start faster without them.
    if name == "create_app":
        from kakehashi.api.app import create_app

        return create_app
    if name == "Settings":
        from kakehashi.settings import Settings

        return Settings
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("kakehashi")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0"
    raise AttributeError(f"module 'kakehashi' has no attribute {name!r}")

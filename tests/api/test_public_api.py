"""The curated public API of the ``kakehashi`` package."""

from __future__ import annotations

import kakehashi


def test_public_api_is_pinned() -> None:
    assert sorted(kakehashi.__all__) == [
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
    for name in kakehashi.__all__:
        assert getattr(kakehashi, name) is not None
    assert kakehashi.create_app.__module__ == "kakehashi.api.app"
    assert isinstance(kakehashi.__version__, str)

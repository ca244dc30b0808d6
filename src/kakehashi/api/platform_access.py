"""What the admin and organization routes share: the admin key, and the platform database,
opened (and migrated) on the first request that needs it."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable

from fastapi import Request

from kakehashi.errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from kakehashi.platform.keys import KeyRepository
from kakehashi.platform.storage.db import Database
from kakehashi.settings import Settings

ADMIN_DISABLED_MESSAGE = (
    "The admin API is disabled on this server: set KAKEHASHI_ADMIN_KEY (or admin_key in the "
    "settings file) to use it."
)


class PlatformAccess:
    """The platform database for the admin routes: the running platform's (``db``), or one
    opened on first use; ``on_key_changed(key_id)`` tells the key store of this process that a
    key changed (revoked, re-limited)."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.on_key_changed: Callable[[str], None] = lambda _key_id: None
        self._db = db
        self._owns_db = db is None
        self._lock = threading.Lock()

    def database(self) -> Database:
        """The migrated database (503 if it cannot be reached)."""
        with self._lock:
            if self._db is None:
                try:
                    self._db = Database.open(self.settings.database_url, self.settings.data_dir)
                except Exception as exc:  # the database is down, or the URL is wrong
                    raise ServiceUnavailableError(
                        f"The platform database is unavailable: {exc.__class__.__name__}."
                    ) from exc
            return self._db

    def keys(self) -> KeyRepository:
        """Keys in the platform database."""
        return KeyRepository(self.database())

    def close(self) -> None:
        """Close the database, if it was opened."""
        with self._lock:
            if self._db is not None and self._owns_db:
                self._db.close()
                self._db = None


def get_platform(request: Request) -> PlatformAccess:
    """The app's :class:`PlatformAccess`."""
    access: PlatformAccess = request.app.state.platform_access
    return access


async def require_admin_key(request: Request) -> None:
    """Demand ``Authorization: Bearer <admin key>``."""
    settings: Settings = request.app.state.settings
    if settings.admin_key is None:
        raise PermissionDeniedError(ADMIN_DISABLED_MESSAGE, code="admin_api_disabled")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise AuthenticationError(
            "You didn't provide an admin key. Send it in an Authorization header using Bearer "
            "auth (i.e. Authorization: Bearer YOUR_ADMIN_KEY)."
        )
    expected = settings.admin_key.get_secret_value()
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise AuthenticationError("Incorrect admin key provided.")

"""Alembic's entry point: runs the migrations on the connection kakehashi hands it.

kakehashi runs migrations itself (:meth:`kakehashi.platform.storage.db.Database.migrate`), on a
connection it already holds, so this file only wires that connection in.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs the alembic CLI by hand
    raise RuntimeError("run migrations through kakehashi (they need its connection)")

context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

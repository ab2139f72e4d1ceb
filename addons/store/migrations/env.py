"""Alembic environment: runs on the connection that ``addons.store.db.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from addons.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through addons.store.db.migrate(url)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Replicas starting together must not migrate the same database twice.
        connection.execute(text("SELECT pg_advisory_xact_lock(7061727)"))
    context.run_migrations()

"""Alembic migrations of the record store, run programmatically by ``addons.store.db.migrate``."""

"""Opening the store: engines tuned for SQLite or PostgreSQL, and migrations to head.

SQLite is the embedded default: one file in WAL mode so the CLI can read while
the gateway writes, with a busy timeout instead of instant "database is
locked" errors. PostgreSQL is for replicas sharing one store.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_BUSY_TIMEOUT = 5.0
PG_CONNECT_TIMEOUT = 5

if TYPE_CHECKING:
    from alembic.config import Config


class StoreUnavailable(Exception):
    """The record store cannot be read or written; the message never holds a secret."""


def open_engine(url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Engine:
    """An engine for ``url`` (any SQLAlchemy URL; ``sqlite:///path`` or ``postgresql://...``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": busy_timeout})
        event.listen(engine, "connect", _sqlite_pragmas(parsed.database, busy_timeout))
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


def _sqlite_pragmas(database: str | None, busy_timeout: float) -> Any:
    in_memory = not database or database == ":memory:" or "mode=memory" in database

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    return on_connect


def describe(engine_or_url: Engine | str) -> str:
    """The store's URL with any password hidden, for messages."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.render_as_string(hide_password=True)


def reason(exc: BaseException) -> str:
    """A one-line reason for a database failure, without SQL parameters (they hold records)."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__


@contextlib.contextmanager
def quiet_alembic() -> Iterator[None]:
    """Alembic logs at INFO each plugin it sets up when imported and each step it runs:
    noise in the gateway's log at every start. Alembic is imported under this too."""
    alembic_logger = logging.getLogger("alembic")
    level = alembic_logger.level
    alembic_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        alembic_logger.setLevel(level)


def alembic_config(engine_connection: Any = None) -> Config:
    """An Alembic config pointing into the package: no alembic.ini is needed."""
    with quiet_alembic():
        from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if engine_connection is not None:
        config.attributes["connection"] = engine_connection
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the store at ``url`` to ``revision`` (head by default), keeping every record."""
    engine = open_engine(url)
    try:
        with engine.begin() as connection, quiet_alembic():
            from alembic import command

            command.upgrade(alembic_config(connection), revision)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"cannot migrate the store {describe(url)}: {reason(exc)}") from exc
    finally:
        engine.dispose()


def connect(url: str) -> Engine:
    """An engine on an existing store whose schema is at head, for readers such as the CLI.

    Unlike the gateway, readers never create or migrate a store: a typo in a
    path must not leave an empty database behind.
    """
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        raise StoreUnavailable(f"there is no record store at {path}")
    engine = open_engine(url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreUnavailable(f"cannot open the store {describe(url)}: {reason(exc)}") from exc
    head = head_revision()
    if revision != head:
        engine.dispose()
        raise StoreUnavailable(
            f"the store {describe(url)} is at schema revision {revision or '(none)'}, "
            f"this awsgate needs {head}: start the gateway once to migrate it"
        )
    return engine


def sqlite_path(url: str) -> str | None:
    """The absolute path of a SQLite file store, None for other stores and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return os.path.abspath(parsed.database)


def current_revision(engine: Engine) -> str | None:
    with quiet_alembic():
        from alembic.runtime.migration import MigrationContext
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    config = alembic_config()
    with quiet_alembic():
        from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(config).get_current_head()

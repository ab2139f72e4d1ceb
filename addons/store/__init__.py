"""The record store: every call the gateway sees, its sessions, and revocations.

Plain SQLAlchemy and Alembic, no mitmproxy. The gateway calls ``migrate(url)``
on start, writes through one ``RecordWriter`` and checks a ``RevocationCache``;
the CLI reads through ``queries`` and ``chain``.
"""

from addons.store.db import StoreUnavailable, connect, migrate, open_engine
from addons.store.records import CallOutcome, CallRecord
from addons.store.revocations import Revocation, RevocationCache, revoke_principal, revoke_session
from addons.store.writer import RecordWriter

__all__ = [
    "CallOutcome",
    "CallRecord",
    "RecordWriter",
    "Revocation",
    "RevocationCache",
    "StoreUnavailable",
    "connect",
    "migrate",
    "open_engine",
    "revoke_principal",
    "revoke_session",
]

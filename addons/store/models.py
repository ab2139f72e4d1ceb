"""The record store's tables, as SQLAlchemy Core: calls, sessions, revocations, checkpoints.

Core tables rather than ORM classes: the writer inserts thousands of rows per
second in executemany batches, and the CLI streams rows as plain mappings.
The migrations under ``migrations/versions`` are the source of truth for the
schema; ``tests/unit/test_store_migrations.py`` checks these tables match head.

Columns added by later revisions must be nullable with no default: the
record hash omits null fields, so older records keep verifying.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps that are always timezone-aware UTC in Python.

    PostgreSQL keeps them as ``timestamptz``; SQLite as naive UTC text, which
    sorts and compares correctly as long as every writer stores UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the record store; use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


calls = Table(
    "calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False, unique=True),
    Column("time", UTCDateTime, nullable=False, index=True),
    Column("duration_ms", Float),
    # who
    Column("session_id", String(128), index=True),
    Column("issuer", Text),
    Column("subject", Text, index=True),
    Column("groups", JSON),
    Column("role", Text),
    Column("source", String(64)),
    # what
    Column("method", String(16)),
    Column("url", Text),
    Column("http_version", String(16)),
    Column("service", String(64)),
    Column("operation", String(128)),
    Column("action", String(200), index=True),
    Column("region", String(32)),
    Column("resources", JSON),
    Column("parameters", JSON),
    # decision
    Column("decision", String(32), nullable=False, index=True),
    Column("rule", Text),
    Column("message", Text),
    Column("approval_id", String(64)),
    # outcome (null until finished)
    Column("status", Integer),
    Column("upstream_status", Integer),
    Column("upstream_request_id", String(128)),
    Column("error", Text),
    Column("masked", JSON),
    # bodies and headers, already masked and without credentials
    Column("request_headers", JSON),
    Column("request_body", LargeBinary),
    Column("request_body_size", BigInteger),
    Column("request_body_sha256", String(64)),
    Column("response_headers", JSON),
    Column("response_body", LargeBinary),
    Column("response_body_size", BigInteger),
    Column("response_body_sha256", String(64)),
    # tamper evidence: a hash chain per writer replica, set when the call finishes
    Column("chain_id", String(128), nullable=False),
    Column("chain_seq", Integer),
    Column("prev_hash", String(64)),
    Column("record_hash", String(64)),
    # added by revision 0002
    Column("user_agent", Text),
    UniqueConstraint("chain_id", "chain_seq"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("issuer", Text),
    Column("subject", Text, index=True),
    Column("groups", JSON),
    Column("role", Text),
    Column("started", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False, index=True),
    Column("calls", Integer, nullable=False, default=0),
    Column("allowed", Integer, nullable=False, default=0),
    Column("denied", Integer, nullable=False, default=0),
    Column("reviewed", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
)

revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # "session" or "principal"
    Column("target", Text, nullable=False),  # a session id, or a subject glob
    Column("reason", Text, nullable=False),
    Column("created", UTCDateTime, nullable=False),
    Column("until", UTCDateTime),
    Column("created_by", Text),
    Index(None, "kind", "target"),
)

chain_checkpoints = Table(
    "chain_checkpoints",
    metadata,
    Column("chain_id", String(128), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("pruned", Integer, nullable=False),
    Column("updated", UTCDateTime, nullable=False),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("created", UTCDateTime, nullable=False),
    Column("expires", UTCDateTime, nullable=False),
    # the held call
    Column("request_id", String(64)),
    Column("invocation_id", String(128), index=True),
    Column("fingerprint", String(64), nullable=False, index=True),
    Column("issuer", Text),
    Column("subject", Text),
    Column("session_id", String(128)),
    Column("groups", JSON),
    Column("role", Text),
    Column("service", String(64)),
    Column("operation", String(128)),
    Column("action", String(200)),
    Column("region", String(32)),
    Column("resources", JSON),
    Column("parameters", JSON),  # credential-named fields redacted
    Column("rule", Text),
    Column("approvers", JSON),
    # the decision
    Column("decided_at", UTCDateTime),
    Column("decided_by", Text),
    Column("decider_issuer", Text),
    Column("decided_via", String(16)),
    Column("reason", Text),
    Column("grant_until", UTCDateTime),
    Column("used_at", UTCDateTime),
    Column("used_by", String(64)),
    # the held call's connection
    Column("hold", String(16)),
    Column("holder", String(200)),
    Column("hold_until", UTCDateTime),
    # At most one pending request per call, even when replicas open it at once.
    Index(
        "uq_approvals_pending_fingerprint",
        "fingerprint",
        unique=True,
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)

grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("approval_id", String(40), nullable=False),
    Column("scope", String(64), nullable=False),
    Column("issuer", Text),
    Column("subject", Text),
    Column("action", String(200)),
    Column("resources", JSON),
    Column("created", UTCDateTime, nullable=False),
    Column("until", UTCDateTime, nullable=False),
    Column("granted_by", Text),
    Column("reason", Text),
    Index(None, "scope"),
)

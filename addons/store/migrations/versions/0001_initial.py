"""Calls and sessions, with a per-replica hash chain over finished calls.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from addons.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("issuer", sa.Text()),
        sa.Column("subject", sa.Text()),
        sa.Column("groups", sa.JSON()),
        sa.Column("role", sa.Text()),
        sa.Column("started", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("allowed", sa.Integer(), nullable=False),
        sa.Column("denied", sa.Integer(), nullable=False),
        sa.Column("reviewed", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_subject", "sessions", ["subject"])
    op.create_index("ix_sessions_last_seen", "sessions", ["last_seen"])
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("duration_ms", sa.Float()),
        sa.Column("session_id", sa.String(128)),
        sa.Column("issuer", sa.Text()),
        sa.Column("subject", sa.Text()),
        sa.Column("groups", sa.JSON()),
        sa.Column("role", sa.Text()),
        sa.Column("source", sa.String(64)),
        sa.Column("method", sa.String(16)),
        sa.Column("url", sa.Text()),
        sa.Column("http_version", sa.String(16)),
        sa.Column("service", sa.String(64)),
        sa.Column("operation", sa.String(128)),
        sa.Column("action", sa.String(200)),
        sa.Column("region", sa.String(32)),
        sa.Column("resources", sa.JSON()),
        sa.Column("parameters", sa.JSON()),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("rule", sa.Text()),
        sa.Column("message", sa.Text()),
        sa.Column("approval_id", sa.String(64)),
        sa.Column("status", sa.Integer()),
        sa.Column("upstream_status", sa.Integer()),
        sa.Column("upstream_request_id", sa.String(128)),
        sa.Column("error", sa.Text()),
        sa.Column("masked", sa.JSON()),
        sa.Column("request_headers", sa.JSON()),
        sa.Column("request_body", sa.LargeBinary()),
        sa.Column("request_body_size", sa.BigInteger()),
        sa.Column("request_body_sha256", sa.String(64)),
        sa.Column("response_headers", sa.JSON()),
        sa.Column("response_body", sa.LargeBinary()),
        sa.Column("response_body_size", sa.BigInteger()),
        sa.Column("response_body_sha256", sa.String(64)),
        sa.Column("chain_id", sa.String(128), nullable=False),
        sa.Column("chain_seq", sa.Integer()),
        sa.Column("prev_hash", sa.String(64)),
        sa.Column("record_hash", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
        sa.UniqueConstraint("request_id", name="uq_calls_request_id"),
        sa.UniqueConstraint("chain_id", "chain_seq", name="uq_calls_chain_id_chain_seq"),
    )
    op.create_index("ix_calls_time", "calls", ["time"])
    op.create_index("ix_calls_session_id", "calls", ["session_id"])
    op.create_index("ix_calls_subject", "calls", ["subject"])
    op.create_index("ix_calls_action", "calls", ["action"])
    op.create_index("ix_calls_decision", "calls", ["decision"])


def downgrade() -> None:
    op.drop_table("calls")
    op.drop_table("sessions")

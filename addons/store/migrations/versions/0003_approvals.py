"""Approval requests for reviewed calls, and the time-window grants approvers give.

New tables only: no existing column changes, so every earlier record still verifies.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from addons.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("invocation_id", sa.String(128)),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("issuer", sa.Text()),
        sa.Column("subject", sa.Text()),
        sa.Column("session_id", sa.String(128)),
        sa.Column("groups", sa.JSON()),
        sa.Column("role", sa.Text()),
        sa.Column("service", sa.String(64)),
        sa.Column("operation", sa.String(128)),
        sa.Column("action", sa.String(200)),
        sa.Column("region", sa.String(32)),
        sa.Column("resources", sa.JSON()),
        sa.Column("parameters", sa.JSON()),
        sa.Column("rule", sa.Text()),
        sa.Column("approvers", sa.JSON()),
        sa.Column("decided_at", UTCDateTime()),
        sa.Column("decided_by", sa.Text()),
        sa.Column("decider_issuer", sa.Text()),
        sa.Column("decided_via", sa.String(16)),
        sa.Column("reason", sa.Text()),
        sa.Column("grant_until", UTCDateTime()),
        sa.Column("used_at", UTCDateTime()),
        sa.Column("used_by", sa.String(64)),
        sa.Column("hold", sa.String(16)),
        sa.Column("holder", sa.String(200)),
        sa.Column("hold_until", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
    )
    op.create_index("ix_approvals_status", "approvals", ["status"])
    op.create_index("ix_approvals_fingerprint", "approvals", ["fingerprint"])
    op.create_index("ix_approvals_invocation_id", "approvals", ["invocation_id"])
    pending = sa.text("status = 'pending'")
    op.create_index(
        "uq_approvals_pending_fingerprint",
        "approvals",
        ["fingerprint"],
        unique=True,
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("approval_id", sa.String(40), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("issuer", sa.Text()),
        sa.Column("subject", sa.Text()),
        sa.Column("action", sa.String(200)),
        sa.Column("resources", sa.JSON()),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=False),
        sa.Column("granted_by", sa.Text()),
        sa.Column("reason", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
    )
    op.create_index("ix_grants_scope", "grants", ["scope"])


def downgrade() -> None:
    op.drop_table("grants")
    op.drop_table("approvals")

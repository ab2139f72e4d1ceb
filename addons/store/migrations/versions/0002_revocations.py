"""Revocations, prune checkpoints, and the caller's User-Agent on each call.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from addons.store.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("until", UTCDateTime()),
        sa.Column("created_by", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
    )
    op.create_index("ix_revocations_kind_target", "revocations", ["kind", "target"])
    op.create_table(
        "chain_checkpoints",
        sa.Column("chain_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("pruned", sa.Integer(), nullable=False),
        sa.Column("updated", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name="pk_chain_checkpoints"),
    )
    # Nullable and without a default, so records hashed before this revision still verify.
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("user_agent", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("user_agent")
    op.drop_table("chain_checkpoints")
    op.drop_table("revocations")

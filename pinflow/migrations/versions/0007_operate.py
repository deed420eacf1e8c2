"""operating runs: a task's own sha after a clear on latest, retries per clear, each try's
sha; backfills and their held runs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from dagstore.core.db import db_now

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dag_id", sa.String(length=250), nullable=False, index=True),
        sa.Column("sha", sa.String(length=40), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_active_runs", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False
        ),
    )
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backfill_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("held", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index("ix_dag_runs_backfill", ["backfill_id", "held"], unique=False)
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("fileloc", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("retries", sa.Integer(), nullable=True))
    with op.batch_alter_table("task_tries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_dag_runs_backfill")
        batch_op.drop_column("held")
        batch_op.drop_column("backfill_id")
    op.drop_table("backfills")
    with op.batch_alter_table("task_tries", schema=None) as batch_op:
        batch_op.drop_column("sha")
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.drop_column("retries")
        batch_op.drop_column("fileloc")
        batch_op.drop_column("sha")

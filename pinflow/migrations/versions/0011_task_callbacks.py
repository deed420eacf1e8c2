"""on_failure callbacks the server owes tries no worker reported (lost, failed expansion)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_callbacks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "ti_id",
            sa.Integer(),
            sa.ForeignKey("task_instances.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.String(length=64), nullable=True),
        sa.Column("grant_hash", sa.String(length=64), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("log_base", sa.Integer(), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("ti_id", "try_number", name="uq_task_callbacks"),
    )
    op.create_index("ix_task_callbacks_state", "task_callbacks", ["state"])


def downgrade() -> None:
    op.drop_index("ix_task_callbacks_state", table_name="task_callbacks")
    op.drop_table("task_callbacks")

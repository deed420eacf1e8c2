"""each try's queued time (the run page's Gantt draws queued → started → ended per try);
runs by logical date through an index (the grid and the runs page)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_tries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.create_index("ix_dag_runs_dag_logical", ["dag_id", "logical_date", "id"])
        batch_op.create_index("ix_dag_runs_logical", ["logical_date", "id"])


def downgrade() -> None:
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_dag_runs_logical")
        batch_op.drop_index("ix_dag_runs_dag_logical")
    with op.batch_alter_table("task_tries", schema=None) as batch_op:
        batch_op.drop_column("queued_at")

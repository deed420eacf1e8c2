"""recovery: finished schedules, claim attempts, active runs by state

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dags", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("schedule_ended", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.String(length=64), nullable=True))
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.create_index("ix_dag_runs_state", ["state"], unique=False)
    # Schedules that ended before this revision were left with a NULL due time, which read
    # as "not computed yet": let the scheduler look at each once more; it marks them ended.


def downgrade() -> None:
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_dag_runs_state")
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.drop_column("attempt")
    with op.batch_alter_table("dags", schema=None) as batch_op:
        batch_op.drop_column("schedule_ended")

"""history at scale: run listings read through indexes that end in the run id; a try's log
as head and tail

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.create_index("ix_dag_runs_dag_id", ["dag_id", "id"], unique=False)
        batch_op.create_index("ix_dag_runs_dag_state_id", ["dag_id", "state", "id"], unique=False)
        batch_op.create_index("ix_dag_runs_state_id", ["state", "id"], unique=False)
        batch_op.drop_index("ix_dag_runs_dag_state")
        batch_op.drop_index("ix_dag_runs_state")
    with op.batch_alter_table("task_tries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_tail", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("log_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # Before 0009 a log is one column: a cut log keeps its tail (the traceback) after a marker.
    op.execute(
        "UPDATE task_tries SET log = log || '\n[pinflow: part of this log was cut here]\n' || "
        "log_tail WHERE log_tail <> ''"
    )
    with op.batch_alter_table("task_tries", schema=None) as batch_op:
        batch_op.drop_column("log_bytes")
        batch_op.drop_column("log_tail")
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.create_index("ix_dag_runs_state", ["state"], unique=False)
        batch_op.create_index("ix_dag_runs_dag_state", ["dag_id", "state"], unique=False)
        batch_op.drop_index("ix_dag_runs_state_id")
        batch_op.drop_index("ix_dag_runs_dag_state_id")
        batch_op.drop_index("ix_dag_runs_dag_id")

"""authoring as Airflow users write it: trigger rules, branches (skipped), mapped task
instances (map_index), pools and max_active_tasks, dagrun_timeout

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from dagstore.core.db import db_now

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(length=250), primary_key=True),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False
        ),
    )
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_active_tasks", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("dagrun_timeout", sa.Double(), nullable=True))
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trigger_rule", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("pool", sa.String(length=250), nullable=True))
        batch_op.add_column(
            sa.Column("branch", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("map_index", sa.Integer(), server_default="-1", nullable=False)
        )
        batch_op.add_column(sa.Column("map_spec", sa.JSON(), nullable=True))
        batch_op.drop_constraint("uq_task_instances", type_="unique")
        batch_op.create_unique_constraint("uq_task_instances", ["run_pk", "task_id", "map_index"])
        batch_op.create_index("ix_task_instances_pool", ["pool", "state"], unique=False)


def downgrade() -> None:
    # Code before 0008 knows neither mapped instances nor `skipped`: say so, change nothing.
    found = op.get_bind().execute(
        sa.text(
            "SELECT count(*) FROM task_instances WHERE map_index >= 0 OR state = 'skipped'"
        )
    ).scalar()
    if found:
        raise RuntimeError(
            f"cannot go below 0008: {found} task instances are mapped or skipped, which older "
            "code cannot read; delete their runs first (pinflow db clean)"
        )
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_task_instances_pool")
        batch_op.drop_constraint("uq_task_instances", type_="unique")
        batch_op.create_unique_constraint("uq_task_instances", ["run_pk", "task_id"])
        batch_op.drop_column("map_spec")
        batch_op.drop_column("map_index")
        batch_op.drop_column("branch")
        batch_op.drop_column("pool")
        batch_op.drop_column("trigger_rule")
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.drop_column("dagrun_timeout")
        batch_op.drop_column("max_active_tasks")
    op.drop_table("pools")

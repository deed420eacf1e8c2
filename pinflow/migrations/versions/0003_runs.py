"""runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from dagstore.core.db import db_now

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dag_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=300), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("sha", sa.String(length=40), nullable=False),
        sa.Column("fileloc", sa.String(length=1024), nullable=False),
        sa.Column("logical_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_key", sa.String(length=40), nullable=True),
        sa.Column("run_type", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("conf", sa.JSON(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["repo_id"], ["repos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dag_id", "scheduled_key", name="uq_dag_runs_scheduled"),
        sa.UniqueConstraint("run_id"),
    )
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.create_index("ix_dag_runs_dag_state", ["dag_id", "state"], unique=False)

    op.create_table(
        "task_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=250), nullable=False),
        sa.Column("upstream", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("max_tries", sa.Integer(), nullable=False),
        sa.Column("retry_delay", sa.Double(), nullable=False),
        sa.Column("timeout", sa.Double(), nullable=True),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_pk"], ["dag_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_pk", "task_id", name="uq_task_instances"),
    )
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_instances_run_pk"), ["run_pk"], unique=False)
        batch_op.create_index("ix_task_instances_state", ["state"], unique=False)

    op.create_table(
        "task_tries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ti_id", sa.Integer(), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["ti_id"], ["task_instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ti_id", "try_number", name="uq_task_tries"),
    )
    with op.batch_alter_table("dags", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("last_logical_date", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("lease_holder", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("lease_fence", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("dags", schema=None) as batch_op:
        batch_op.drop_column("lease_fence")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("lease_holder")
        batch_op.drop_column("last_logical_date")
        batch_op.drop_column("next_due_at")

    op.drop_table("task_tries")
    with op.batch_alter_table("task_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_task_instances_state")
        batch_op.drop_index(batch_op.f("ix_task_instances_run_pk"))

    op.drop_table("task_instances")
    with op.batch_alter_table("dag_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_dag_runs_dag_state")

    op.drop_table("dag_runs")

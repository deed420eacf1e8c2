"""parsed dags

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from dagstore.core.db import db_now

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("fileloc", sa.String(length=1024), nullable=False),
        sa.Column("current_version_id", sa.Integer(), nullable=True),
        sa.Column("current_sha", sa.String(length=40), nullable=True),
        sa.Column("structure", sa.JSON(), nullable=False),
        sa.Column("structure_hash", sa.String(length=64), nullable=False),
        sa.Column("schedule", sa.String(length=200), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("is_paused", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["current_version_id"], ["versions.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["repo_id"], ["repos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dag_id"),
    )
    with op.batch_alter_table("dags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dags_repo_id"), ["repo_id"], unique=False)

    op.create_table(
        "version_dags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("fileloc", sa.String(length=1024), nullable=False),
        sa.Column("structure", sa.JSON(), nullable=False),
        sa.Column("structure_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "dag_id", name="uq_version_dags"),
    )
    with op.batch_alter_table("version_dags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_version_dags_dag_id"), ["dag_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_version_dags_version_id"), ["version_id"], unique=False
        )

    op.create_table(
        "version_errors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("file", sa.String(length=1024), nullable=False),
        sa.Column("summary", sa.String(length=1000), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("version_errors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_version_errors_version_id"), ["version_id"], unique=False
        )

    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("parse_state", sa.String(length=20), server_default="pending", nullable=False)
        )
        batch_op.add_column(sa.Column("parsed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_column("parsed_at")
        batch_op.drop_column("parse_state")

    with op.batch_alter_table("version_errors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_errors_version_id"))

    op.drop_table("version_errors")
    with op.batch_alter_table("version_dags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_version_dags_version_id"))
        batch_op.drop_index(batch_op.f("ix_version_dags_dag_id"))

    op.drop_table("version_dags")
    with op.batch_alter_table("dags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dags_repo_id"))

    op.drop_table("dags")

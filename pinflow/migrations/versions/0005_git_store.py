"""git store: refs and packs in the database

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from dagstore.core.db import db_now

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "git_refs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(["repo_id"], ["repos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("repo_id", "name", name="uq_git_refs"),
    )
    op.create_table(
        "git_packs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("objects", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=40), nullable=False),
        sa.Column("index_data", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=db_now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["repo_id"], ["repos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("repo_id", "name", name="uq_git_packs"),
    )
    with op.batch_alter_table("git_packs", schema=None) as batch_op:
        batch_op.create_index("ix_git_packs_repo_state", ["repo_id", "state"], unique=False)
    op.create_table(
        "git_pack_chunks",
        sa.Column("pack_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["pack_id"], ["git_packs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pack_id", "seq"),
    )
    # Repositories still on disk are moved in by `pinflow db upgrade` (dagstore.git.diskimport),
    # which needs git code and a cache: not a schema step.


def downgrade() -> None:
    op.drop_table("git_pack_chunks")
    with op.batch_alter_table("git_packs", schema=None) as batch_op:
        batch_op.drop_index("ix_git_packs_repo_state")
    op.drop_table("git_packs")
    op.drop_table("git_refs")

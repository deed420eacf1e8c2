"""Tables of the git store: refs, and packs of objects stored as rows (issue 13).

A push's objects arrive as one pack; the store keeps the pack's bytes in chunks and its index
beside them, so a server reads whole packs into its local cache once and serves every object
from there, as from an on-disk repository. A pack is `quarantine` while its push is checked:
no other server sees it, and a refused push deletes it. It becomes `live` just before the
first ref that needs it moves.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dagstore.core.db import Base, db_now

PACK_CHUNK_BYTES = 1024 * 1024  # streamed in and out a chunk at a time, never the whole pack


class GitRef(Base):
    """A ref, HEAD or a keep ref: a 40-hex sha, or `ref: <name>` for a symbolic ref."""

    __tablename__ = "git_refs"
    __table_args__ = (UniqueConstraint("repo_id", "name", name="uq_git_refs"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(300))


class GitPack(Base):
    __tablename__ = "git_packs"
    __table_args__ = (
        UniqueConstraint("repo_id", "name", name="uq_git_packs"),
        Index("ix_git_packs_repo_state", "repo_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))  # dulwich's pack name: sha1 of its objects
    state: Mapped[str] = mapped_column(String(20))  # quarantine | live
    objects: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)  # bytes of the pack file
    checksum: Mapped[str] = mapped_column(String(40))  # the pack file's trailing sha1
    index_data: Mapped[bytes] = mapped_column(LargeBinary)  # the .idx file
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())


class GitPackChunk(Base):
    __tablename__ = "git_pack_chunks"

    pack_id: Mapped[int] = mapped_column(
        ForeignKey("git_packs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)

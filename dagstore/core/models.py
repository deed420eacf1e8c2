"""Tables of the DAG store: tokens, repositories, versions (commits) and the DAGs they define."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from dagstore.core.db import Base, db_now


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    scope: Mapped[str] = mapped_column(String(20))
    # sha256 of the secret: tokens are long random strings, so a fast hash is enough.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Refreshed at most every LAST_USED_PRECISION (dagstore.access.tokens): a hint for revocation.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Repo(Base):
    __tablename__ = "repos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    track: Mapped[str] = mapped_column(String(200), default="main")
    strict: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())


class Version(Base):
    """One commit the store received, on the ref it first arrived with."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("repo_id", "sha", name="uq_versions_repo_sha"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    sha: Mapped[str] = mapped_column(String(40))
    ref: Mapped[str] = mapped_column(String(255))
    author: Mapped[str] = mapped_column(String(255), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    committed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    pushed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())
    # pending → parsed; only parsed versions can be current or be run.
    parse_state: Mapped[str] = mapped_column(String(20), server_default="pending")
    parsed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VersionDag(Base):
    """A DAG as one version defines it: the structure a run pinned to that version executes."""

    __tablename__ = "version_dags"
    __table_args__ = (UniqueConstraint("version_id", "dag_id", name="uq_version_dags"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), index=True
    )
    dag_id: Mapped[str] = mapped_column(String(250), index=True)
    fileloc: Mapped[str] = mapped_column(String(1024))
    structure: Mapped[dict] = mapped_column(JSON)
    structure_hash: Mapped[str] = mapped_column(String(64))


class VersionError(Base):
    """A DAG file of one version that failed to import, with its traceback's tail."""

    __tablename__ = "version_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), index=True
    )
    file: Mapped[str] = mapped_column(String(1024))
    summary: Mapped[str] = mapped_column(String(1000))
    error: Mapped[str] = mapped_column(Text)


class Dag(Base):
    """A DAG as the scheduler sees it: its current version and whether it is scheduled."""

    __tablename__ = "dags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250), unique=True)
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"), index=True)
    fileloc: Mapped[str] = mapped_column(String(1024))
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", ondelete="SET NULL"), nullable=True
    )
    current_sha: Mapped[str | None] = mapped_column(String(40), nullable=True)
    structure: Mapped[dict] = mapped_column(JSON)
    structure_hash: Mapped[str] = mapped_column(String(64))
    schedule: Mapped[str | None] = mapped_column(String(200), nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Scheduling: when the next scheduled run is due (NULL: not computed yet, or the
    # timetable changed), whether the schedule has no ticks left (@once done, past end_date:
    # the DAG leaves the scheduler's candidates for good), the newest logical date scheduled,
    # and the lease a scheduler holds while it works on this DAG (holder, expiry by the
    # database clock, fencing counter).
    next_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    schedule_ended: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    last_logical_date: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    lease_holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_fence: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=db_now(), onupdate=db_now()
    )

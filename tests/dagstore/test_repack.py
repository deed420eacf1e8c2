"""Consolidation of a repo's packs, racing a push that has published its pack but not yet
moved its ref: nothing of that pack may be lost."""

from __future__ import annotations

import os
from pathlib import Path

from dulwich.objects import Blob, Commit, Tree
from sqlalchemy import event, func, select

from dagstore.core.db import Database
from dagstore.git.models import PACK_CHUNK_BYTES, GitPack
from dagstore.git.repack import MAX_PACKS, consolidate
from dagstore.git.repos import create_repo
from tests.support.store import fsck, storage_for


def commit_objects(n: int, parent: bytes | None) -> tuple[Commit, list]:
    blob = Blob.from_string(f"content {n}\n".encode() * 50)
    tree = Tree()
    tree.add(b"file.txt", 0o100644, blob.id)
    commit = Commit()
    commit.tree = tree.id
    commit.parents = [parent] if parent else []
    commit.author = commit.committer = b"Ada <ada@example.com>"
    commit.commit_time = commit.author_time = 1767225600 + n
    commit.commit_timezone = commit.author_timezone = 0
    commit.message = f"commit {n}\n".encode()
    return commit, [(blob, None), (tree, None), (commit, None)]


def test_consolidation_keeps_a_pack_no_ref_points_into_yet(db: Database, tmp_path: Path):
    storage = storage_for(db, tmp_path)
    with db.write() as session:
        create_repo(session, storage, "busy")
    tip = None
    for n in range(MAX_PACKS + 1):  # one pack per push, each moving main
        commit, objects = commit_objects(n, tip)
        with storage.open("busy") as repo:
            repo.object_store.add_objects(objects)
            repo.refs.set_if_equals(b"refs/heads/main", tip, commit.id)
        tip = commit.id
    late, objects = commit_objects(999, tip)
    with storage.open("busy") as pushing:  # another push: its pack is live, its ref not moved
        pushing.object_store.add_objects(objects)
        with storage.open("busy") as other:
            assert consolidate(other)
        pushing.refs.set_if_equals(b"refs/heads/main", tip, late.id)
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(GitPack)) <= 2
    assert fsck(storage, "busy") == 3 * (MAX_PACKS + 2)


def test_a_download_that_meets_a_consolidation_reads_the_consolidated_pack(
    db: Database, tmp_path: Path
):
    """Server 2 reads a two-chunk pack from the database while server 1 consolidates it away
    between the chunks: server 2 lists the packs again and reads the object from the new one
    (issue 24, part 5)."""
    server1 = storage_for(db, tmp_path / "one")
    db2 = Database(db.url)
    server2 = storage_for(db2, tmp_path / "two")
    with db.write() as session:
        create_repo(session, server1, "busy")
    big = Blob.from_string(os.urandom(PACK_CHUNK_BYTES + PACK_CHUNK_BYTES // 2))
    with server1.open("busy") as repo:
        repo.object_store.add_objects([(big, None)])
        for n in range(MAX_PACKS):
            repo.object_store.add_objects([(Blob.from_string(b"small %d\n" % n), None)])
    with db.read() as session:
        big_pack = session.scalar(select(GitPack.id).order_by(GitPack.size.desc()).limit(1))
    consolidated: list[bool] = []

    @event.listens_for(db2.engine, "after_cursor_execute")
    def between_chunks(conn, cursor, statement, params, context, executemany) -> None:
        values = list(params.values()) if isinstance(params, dict) else list(params or ())
        if "git_pack_chunks" in statement and values[:2] == [big_pack, 0] and not consolidated:
            with server1.open("busy") as repo:  # meanwhile, on server 1
                consolidated.append(consolidate(repo))

    try:
        with server2.open("busy") as repo:
            assert repo.object_store[big.id].as_raw_string() == big.as_raw_string()
    finally:
        db2.dispose()
    assert consolidated == [True]

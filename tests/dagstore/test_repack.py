"""Consolidation of a repo's packs, racing a push that has published its pack but not yet
moved its ref: nothing of that pack may be lost."""

from __future__ import annotations

from pathlib import Path

from dulwich.objects import Blob, Commit, Tree
from sqlalchemy import func, select

from dagstore.db import Database
from dagstore.gitmodels import GitPack
from dagstore.repack import MAX_PACKS, consolidate
from dagstore.repos import create_repo
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

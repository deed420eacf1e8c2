"""Writing commits into the store directly, as a push would, without the server's hooks: for
tests that need git data in the database but no version recorded (a crash between the two)."""

from __future__ import annotations

from pathlib import Path

from dulwich.repo import Repo

from dagstore.core.db import Database
from dagstore.git.diskcache import DiskCache
from dagstore.git.diskimport import import_repository
from dagstore.git.repack import verify_objects
from dagstore.git.repo import RepoStorage
from tests.support.git import Git


def storage_for(db: Database, home: Path) -> RepoStorage:
    return RepoStorage(db, DiskCache(home / "cache" / "server", 1 << 30))


def write_commits(storage: RepoStorage, name: str, work: Git, branch: str = "main") -> None:
    """`work`'s branch, objects and ref, into the store repo `name` (which must exist)."""
    bare = work.path.parent / f"{work.path.name}-bare.git"
    if not bare.exists():
        Git(bare).run("init", "-q", "--bare", "-b", branch)
    work.run("push", "-q", "--force", str(bare), branch)
    with Repo(str(bare)) as source:
        import_repository(storage, name, source)


def refs_of(storage: RepoStorage, name: str) -> dict[bytes, bytes]:
    """Every ref of a store repo as stored (keep refs and HEAD included)."""
    with storage.open(name) as repo:
        return {ref: repo.refs.read_ref(ref) or b"" for ref in sorted(repo.refs.allkeys())}


def fsck(storage: RepoStorage, name: str) -> int:
    """Every object the refs reach is there and hashes to its name; returns how many."""
    from dulwich.object_store import MissingObjectFinder

    with storage.open(name) as repo:
        wants = sorted(set(repo.refs.as_dict().values()))
        ids = [sha for sha, _ in MissingObjectFinder(repo.object_store, haves=[], wants=wants)]
        return verify_objects(repo.object_store, ids)

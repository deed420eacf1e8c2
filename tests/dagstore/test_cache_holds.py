"""A server's disk cache is shared by its worker processes, and any of them may evict any entry
at any moment: a reader must hold what it found (issue 24, part 6).

Each test evicts an entry at the moment the reader marks it used (`DiskCache.touch`), as
another process's eviction could: on the code before the fix, the reader had only checked
that the files existed, and its later open failed (FileNotFoundError, PackFileDisappeared).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dulwich.objects import Blob
from dulwich.pack import PackData
from fastapi.testclient import TestClient

from dagstore.access.tokens import create_token
from dagstore.core.db import Database
from dagstore.core.settings import Settings
from dagstore.git.diskcache import DiskCache
from dagstore.git.packsend import stream_pack
from dagstore.git.repo import RepoStorage
from dagstore.git.repos import create_repo
from pinflow.app import create_app
from pinflow.migrate import upgrade
from tests.support.git import Git
from tests.support.store import storage_for, write_commits


class Evicting:
    """Stands in for another process: evicts the entry being touched, once armed."""

    def __init__(self, disk: DiskCache) -> None:
        self.disk = disk
        self.armed = False
        self.evicted: list[Path] = []
        self._touch = disk.touch
        disk.touch = self.touch  # type: ignore[method-assign]

    def touch(self, path: Path) -> None:
        if self.armed:
            for sibling in path.parent.glob(path.name.split(".", 1)[0] + ".*"):
                sibling.unlink()
                self.evicted.append(sibling)
        self._touch(path)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/pinflow.db")
    upgrade(db)
    yield db
    db.dispose()


def test_an_archive_evicted_after_it_was_found_is_served(sqlite_db: Database, tmp_path: Path):
    settings = replace(
        Settings.load(home=tmp_path / "home", database_url=sqlite_db.url),
        parse_sandbox="off",
        archive_memory_mb=0,  # no bytes in memory: every GET goes to the disk cache
    )
    app = create_app(settings)
    store = app.state.store
    with sqlite_db.write() as session:
        create_repo(session, store.storage, "r")
        token = create_token(session, "read", "reader")
    work = Git(tmp_path / "work").init()
    sha = work.commit("one", **{"dags__a.py": "x = 1\n"})
    write_commits(storage_for(sqlite_db, tmp_path / "pusher"), "r", work)
    other_process = Evicting(store.archives.disk)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        first = client.get(f"/api/v1/repos/r/archive/{sha}.tar.gz")
        assert first.status_code == 200
        other_process.armed = True
        again = client.get(f"/api/v1/repos/r/archive/{sha}.tar.gz")
        assert again.status_code == 200, again.text
        assert again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]
    store.db.dispose()
    assert other_process.evicted, "the eviction never happened: the test tests nothing"


def test_a_pack_evicted_after_it_was_found_is_read(sqlite_db: Database, tmp_path: Path):
    """(dulwich's own PackFileDisappeared handling covered this path before too: it reads the
    pack again. Here the store opens what it found, or fetches it again, itself.)"""
    with sqlite_db.write() as session:
        create_repo(session, storage_for(sqlite_db, tmp_path / "w"), "r")
    blob = Blob.from_string(b"z" * 20_000)
    with storage_for(sqlite_db, tmp_path / "pusher").open("r") as repo:
        repo.object_store.add_objects([(blob, None)])
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    storage = RepoStorage(sqlite_db, disk)
    with storage.open("r") as repo:  # an earlier request downloaded the pack
        assert blob.id in repo.object_store
    other_process = Evicting(disk)
    other_process.armed = True
    with storage.open("r") as repo:  # the pack is on disk: found, touched, evicted
        assert repo.object_store[blob.id].as_raw_string() == blob.as_raw_string()
    assert other_process.evicted


def test_a_pack_evicted_while_a_clone_sends_it_is_sent(sqlite_db: Database, tmp_path: Path):
    """upload-pack lists the packs, then `dagstore.git.packsend` copies entries out of them."""
    with sqlite_db.write() as session:
        create_repo(session, storage_for(sqlite_db, tmp_path / "w"), "r")
    blob = Blob.from_string(b"y" * 20_000 + bytes(range(256)) * 40)
    with storage_for(sqlite_db, tmp_path / "pusher").open("r") as repo:
        repo.object_store.add_objects([(blob, None)])
    storage = RepoStorage(sqlite_db, DiskCache(tmp_path / "cache", 1 << 30))
    with storage.open("r") as repo:
        packs = repo.object_store.packs  # upload-pack's list: every pack found
        shutil.rmtree(tmp_path / "cache")  # another process evicts everything meanwhile
        sent: list[bytes] = []
        stream_pack(sent.append, packs, repo.object_store, [(blob.id, None)], repo.object_format)
    with PackData.from_file(io.BytesIO(b"".join(sent)), repo.object_format) as data:
        data.check()  # its trailing checksum
        assert [o.sha().hex().encode() for o in data.iter_unpacked()] == [blob.id]

"""Packs are deduplicated by name, so a push can find its pack already stored by another one:
the row is then shared, never the finder's to delete (issue 24, part 1).

Every test here lost objects on the code before the fix: a push that moved no ref deleted
the row it had merely reused, and publishing did not check that what it published was still
there. In-process tests drive two pushes' object stores by hand (the interleavings that
matter, without timing); the others replay real receive-pack requests to a real server.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from dagstore.core.db import Database, db_time
from dagstore.git.models import GitPack
from dagstore.git.packs import discard_stale_quarantine
from dagstore.git.repo import DatabaseRepo, RepoStorage
from dagstore.git.repos import create_repo
from tests.support.git import Git, clone, pack_objects, receive_pack
from tests.support.server import ServerProcess
from tests.support.store import fsck, refs_of, storage_for, write_commits

MAIN = b"refs/heads/main"


class Store:
    """A repo `r` whose main is at commit A, and a work tree with B on top of A, not pushed."""

    def __init__(self, db: Database, tmp_path: Path) -> None:
        self.db = db
        self.tmp = tmp_path
        self.storage = storage_for(db, tmp_path / "server")
        with db.write() as session:
            create_repo(session, self.storage, "r")
        self.work = Git(tmp_path / "work").init()
        self.a = self.work.commit("A", **{"a.txt": "A\n"})
        write_commits(self.storage, "r", self.work)
        self.b = self.work.commit("B", **{"b.txt": "B\n" * 50})
        self.pack = pack_objects(self.work, f"{self.b}\n^{self.a}\n", "--revs", "--thin")
        self.opened: list[DatabaseRepo] = []

    def receive(self, pack: bytes | None = None) -> DatabaseRepo:
        """A push's request after its pack arrived (in quarantine), before any ref moved."""
        repo = self.storage.open_unmanaged("r")
        self.opened.append(repo)
        stream = io.BytesIO(self.pack if pack is None else pack)
        repo.object_store.add_thin_pack(stream.read, None)
        return repo

    def fresh(self) -> RepoStorage:
        """What a new server sees: the database, and an empty cache of its own."""
        return storage_for(self.db, self.tmp / f"fresh-{uuid.uuid4().hex[:8]}")

    def has(self, sha: str) -> bool:
        with self.fresh().open("r") as repo:
            return sha.encode() in repo.object_store

    def pack_states(self) -> list[str]:
        """The state of every pack row: A's pack, then whatever the pushes left."""
        with self.db.read() as session:
            return list(session.scalars(select(GitPack.state).order_by(GitPack.id)))


@pytest.fixture
def store(db: Database, tmp_path: Path) -> Iterator[Store]:
    store = Store(db, tmp_path)
    yield store
    for repo in store.opened:
        repo.close()


def move_main(repo: DatabaseRepo, old: str, new: str) -> None:
    repo.refs.set_if_equals(MAIN, old.encode(), new.encode())


def test_a_push_that_loses_its_race_keeps_the_winner_s_pack(store: Store):
    """Two pushes of one commit from one base (two CI jobs): the same pack, one row."""
    winner, loser = store.receive(), store.receive()
    move_main(winner, store.a, store.b)
    winner.end_push()
    with pytest.raises(OSError, match="moved"):
        move_main(loser, store.a, store.b)
    loser.end_push()
    assert store.has(store.b), "the losing push deleted the pack main points into"
    assert fsck(store.fresh(), "r") > 0


def test_a_push_that_loses_its_race_leaves_nothing_of_its_own(store: Store):
    """Its pack was never live (the swap that failed rolled the publishing back) and goes."""
    store.work.run("checkout", "-q", "-b", "side", store.a)
    side = store.work.commit("side", **{"c.txt": "C\n"})
    winner = store.receive()
    loser = store.receive(pack_objects(store.work, f"{side}\n^{store.a}\n", "--revs"))
    move_main(winner, store.a, store.b)
    winner.end_push()
    with pytest.raises(OSError, match="moved"):
        move_main(loser, store.a, side)
    loser.end_push()
    assert store.pack_states() == ["live", "live"]  # A's and B's
    assert not store.has(side)


def test_an_owner_that_is_refused_keeps_a_pack_another_push_published(store: Store):
    owner, reuser = store.receive(), store.receive()
    move_main(reuser, store.a, store.b)  # publishes the row the owner created
    reuser.end_push()
    owner.end_push()  # refused: moved nothing
    assert store.has(store.b)
    assert store.pack_states() == ["live", "live"]  # A's, and B's: one row, live


def test_a_pack_its_owner_discards_is_stored_again_by_the_push_that_reused_it(store: Store):
    owner, reuser = store.receive(), store.receive()
    owner.end_push()  # refused: its own row goes, while another push still needs its objects
    move_main(reuser, store.a, store.b)
    reuser.end_push()
    assert store.has(store.b)
    assert fsck(store.fresh(), "r") > 0


def test_a_stale_quarantine_row_swept_while_a_ref_moves_onto_it(store: Store):
    store.receive()  # a push whose server died before it published or discarded
    with store.db.write() as session:
        session.execute(
            update(GitPack)
            .where(GitPack.state == "quarantine")
            .values(created_at=db_time(session) - timedelta(hours=2))
        )
    pushing = store.receive()  # reuses the crashed push's row
    assert discard_stale_quarantine(store.db) == 1  # a server starts meanwhile
    move_main(pushing, store.a, store.b)
    pushing.end_push()
    assert store.has(store.b)
    assert fsck(store.fresh(), "r") > 0


def test_publishing_waits_for_a_sweep_in_flight_and_stores_the_pack_again(store: Store):
    """PostgreSQL, READ COMMITTED: the sweep's DELETE is uncommitted when the push publishes;
    the publish waits for it, then finds the row gone and must not move the ref onto it."""
    if store.db.is_sqlite:
        pytest.skip("SQLite has one writer: the sweep runs wholly before or after")
    store.receive()  # a push whose server died before it published or discarded
    pushing = store.receive()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            move_main(pushing, store.a, store.b)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with store.db.write() as session:
        assert session.execute(text("DELETE FROM git_packs WHERE state = 'quarantine'")).rowcount
        thread = threading.Thread(target=publish)
        thread.start()
        wait_for_lock_wait(store.db)
    thread.join(30)
    assert not errors, errors
    pushing.end_push()
    assert store.has(store.b)
    assert refs_of(store.fresh(), "r")[MAIN] == store.b.encode()


# -- through a real server ----------------------------------------------------------------


class Remote:
    """A repo on the server whose main is at A (pushed by `work`, which holds more)."""

    def __init__(self, server: ServerProcess, name: str, tmp_path: Path, a_text: str) -> None:
        self.server = server
        self.name = name
        server.create_repo(name)
        self.url = server.git_url(name, server.tokens["push"])
        self.work = Git(tmp_path / "w").init()
        self.a = self.work.commit("A", **{"a.txt": a_text})
        self.work.run("push", "-q", self.url, "main")

    def receive(self, updates: list[tuple[str, str, str]], pack: bytes) -> list[str]:
        url = f"{self.server.url}/git/{self.name}.git"
        return receive_pack(url, self.server.tokens["push"], updates, pack)

    def read_url(self) -> str:
        return self.server.git_url(self.name, self.server.tokens["read"])


def test_a_replayed_push_that_fails_to_write_keeps_main_whole(
    store_server: ServerProcess, repo_name: str, tmp_path: Path
):
    """The exact request twice (a retried push): `ok`, then `failed to write`; main intact."""
    remote = Remote(store_server, repo_name, tmp_path, "A\n")
    a, b = remote.a, remote.work.commit("B", **{"b.txt": "B\n" * 50})
    pack = pack_objects(remote.work, f"{b}\n^{a}\n", "--revs", "--thin")
    first = remote.receive([(a, b, "refs/heads/main")], pack)
    assert first == ["unpack ok", "ok refs/heads/main"]
    again = remote.receive([(a, b, "refs/heads/main")], pack)
    assert again == ["unpack ok", "ng refs/heads/main failed to write"]
    cloned = clone(remote.read_url(), tmp_path / "c")
    assert cloned.returncode == 0 and "empty" not in cloned.stderr, cloned.stderr
    assert Git(tmp_path / "c").head() == b
    Git(tmp_path / "c").run("fsck", "--full")


def test_refused_pushes_of_a_kept_commit_keep_it_fetchable(
    store_server: ServerProcess, repo_name: str, tmp_path: Path
):
    """After a force-push only a keep ref holds B. Clients do not see keep refs, so pushing B
    again resends its objects: a refusal (outside heads/tags) or a lost race must not take
    the keep ref's pack with it."""
    remote = Remote(store_server, repo_name, tmp_path, "A\n")
    a, b = remote.a, remote.work.commit("B", **{"b.txt": "B\n" * 50})
    remote.work.run("push", "-q", remote.url, "main")
    remote.work.run("push", "-q", "--force", remote.url, f"{a}:refs/heads/main")
    refused = remote.work.run("push", remote.url, f"{b}:refs/meta/x", check=False)
    assert refused.returncode != 0 and "only branches" in refused.stderr
    pack = pack_objects(remote.work, f"{b}\n^{a}\n", "--revs", "--thin")
    lost = remote.receive([(b, b, "refs/heads/main")], pack)
    assert lost == ["unpack ok", "ng refs/heads/main failed to write"]
    fetched = Git(tmp_path / "f").init()
    fetched.run("fetch", "-q", remote.read_url(), b)
    fetched.run("fsck", "--full", b)
    with store_server.api("read") as api:
        assert api.get(f"/repos/{repo_name}/archive/{b}.tar.gz").status_code == 200


def test_a_lying_old_sha_leaves_no_keep_ref_to_a_discarded_pack(
    store_server: ServerProcess, repo_name: str, tmp_path: Path
):
    """A client that names, as main's old value, a commit only its own pack holds: the swap
    fails, and no keep ref may be left pointing into the pack the refused push takes away."""
    remote = Remote(store_server, repo_name, tmp_path, "A\n")
    a, b = remote.a, remote.work.commit("B", **{"b.txt": "B\n"})
    remote.work.run("checkout", "-q", "-b", "side", a)
    side = remote.work.commit("side", **{"c.txt": "C\n"})
    pack = pack_objects(remote.work, f"{b}\n{side}\n^{a}\n", "--revs")
    lied = remote.receive([(b, side, "refs/heads/main")], pack)
    assert lied == ["unpack ok", "ng refs/heads/main failed to write"]
    db = Database(store_server.database_url)
    try:
        storage = storage_for(db, tmp_path / "fresh")
        assert refs_of(storage, repo_name)[MAIN] == a.encode()
        fsck(storage, repo_name)  # every ref, keep refs included, reaches whole objects
    finally:
        db.dispose()


def test_a_thin_pack_against_a_missing_base_is_refused_cleanly(
    store_server: ServerProcess, repo_name: str, tmp_path: Path
):
    """What a push sees when its base is not in the store (the symptom of a lost pack before
    the fix, or a client's mistake): an unpack error, not a dropped connection."""
    remote = Remote(store_server, repo_name, tmp_path, "line\n" * 500)
    remote.work.commit("B", **{"a.txt": "line\n" * 500 + "more\n"})
    c = remote.work.commit("C", **{"a.txt": "line\n" * 500 + "more\nand more\n"})
    thin = pack_objects(remote.work, f"{c}\n^{c}~1\n", "--revs", "--thin")  # against B's blob
    report = remote.receive([(remote.a, c, "refs/heads/main")], thin)
    assert report[0].startswith("unpack ") and "does not have" in report[0], report
    with store_server.api("read") as api:
        assert api.get(f"/repos/{repo_name}/resolve/main").json() == {"sha": remote.a}


# -- helpers ---------------------------------------------------------------------------------


def wait_for_lock_wait(db: Database, timeout: float = 10.0) -> None:
    """Until a session of this database waits for a row lock (PostgreSQL)."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            if conn.execute(query).scalar():
                return
        time.sleep(0.01)
    raise AssertionError("nobody waited for the lock")

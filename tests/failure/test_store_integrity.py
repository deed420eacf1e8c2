"""Store integrity under concurrent pushes (issue 24): the git store never loses an object.

Three API servers with homes of their own on one database, each with a disk cache of 1 MiB so
every server (and both processes of the one started with `--workers 2`) evicts and reads
packs again from the database all the time. Every round, at one moment, through servers
taken in turn:
- two clients push the same new commit of each of four lines to its branch from the same
  base (identical packs, one row: one lands, the other loses the race or finds nothing to do);
- a client pushes the commit a force-push left only a keep ref holding to `refs/meta/...`
  (refused: outside heads/tags; its pack is the kept commit's pack again);
- a client pushes a commit with a broken DAG file to the strict repo (refused);
- a client pushes a tag;
then one line is force-pushed back by a commit (a keep ref holds what it dropped), whose next
push re-sends the kept objects. Every landing push past 16 live packs consolidates them, while
the other servers read those packs.

Afterwards a fresh server (empty home) serves a mirror clone of every branch and tag and a
fetch of every keep ref's commit, which `git fsck --full` checks; every keep ref's commit is
archived; every ref is where the pushes' reports say it must be; no pack is left in
quarantine. The outcomes of the races vary from run to run; what is asserted does not.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dagstore.core.db import Database
from dagstore.git.models import GitPack, GitRef
from dagstore.git.repack import MAX_PACKS
from tests.conftest import BACKENDS, _database_for
from tests.support.git import Git, at_once, git_env
from tests.support.server import ServerProcess, make_tokens
from tests.support.store import fsck, storage_for

LINES = 4
ROUNDS = 8
REPO = "integrity"
BROKEN_DAG = "from pinflow import DAG\n\ndef oops(:\n"


def report(scenario: str, **figures: object) -> None:
    print(f"[reliability] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@dataclass
class History:
    """Every commit the clients will push, made up front in one source repository."""

    source: Path
    lines: list[list[str]] = field(default_factory=list)  # lines[j][r]: line j's commit of round r
    broken: list[str] = field(default_factory=list)  # broken[r]: a strict repo refuses it
    base: str = ""


def make_history(path: Path) -> History:
    work = Git(path).init()
    history = History(path)
    history.base = work.commit("base", **{"README.txt": "the store's integrity stress\n"})
    shared = "".join(f"line {i} of a file every commit of every line changes\n" for i in range(400))
    for j in range(LINES):
        work.run("checkout", "-q", "-b", f"l{j}", history.base)
        commits = []
        for r in range(ROUNDS + 1):
            shared = shared.replace(f"line {r * 7 + j} ", f"line {r * 7 + j} (l{j} r{r}) ", 1)
            commits.append(
                work.commit(
                    f"l{j} r{r}",
                    **{"shared.txt": shared, f"l{j}/r{r}.txt": f"{j} {r}\n" * (200 + 50 * r)},
                )
            )
        history.lines.append(commits)
    for r in range(ROUNDS):
        work.run("checkout", "-q", "--detach", history.lines[0][r])
        history.broken.append(work.commit(f"broken {r}", **{"dags__broken.py": BROKEN_DAG}))
    return history


class Client:
    """A bare clone of the source (every commit there), pushing by sha to a server."""

    def __init__(self, path: Path, source: Path) -> None:
        self.path = path
        self.env = git_env(path.parent)
        subprocess.run(
            ["git", "clone", "-q", "--bare", "--shared", str(source), str(path)],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def push(self, url: str, sha: str, ref: str, force: bool = False) -> Outcome:
        args = ["git", "push", "--porcelain", url, f"{'+' if force else ''}{sha}:{ref}"]
        result = subprocess.run(
            args, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=120
        )
        return Outcome(ref, sha, result.returncode, result.stdout + result.stderr)


@dataclass
class Outcome:
    ref: str
    sha: str
    code: int
    text: str

    @property
    def landed(self) -> bool:
        """The report says the ref now names the pushed commit (or already did)."""
        return self.code == 0 and f":{self.ref}\t" in self.text

    @property
    def lost_race(self) -> bool:
        return self.code != 0 and (
            "failed to write" in self.text or "fetch first" in self.text or "stale" in self.text
        )


class Stress:
    def __init__(self, url: str, servers: list[ServerProcess], tokens: dict[str, str]) -> None:
        self.url = url
        self.servers = servers
        self.tokens = tokens
        self.turn = 0

    def next_url(self) -> str:
        server = self.servers[self.turn % len(self.servers)]
        self.turn += 1
        return server.git_url(REPO, self.tokens["push"])


@pytest.fixture(params=BACKENDS)
def stress(request, tmp_path_factory) -> Iterator[Stress]:
    base = tmp_path_factory.mktemp("integrity")
    for url in _database_for(request, request.param, str(base)):
        tokens = make_tokens(url)
        servers = []
        try:
            for i, extra in enumerate([("--workers", "2"), (), ()]):
                server = ServerProcess(
                    home=base / f"server-{i}",
                    database_url=url,
                    backend=request.param,
                    extra_env={"PINFLOW_SERVER_CACHE_MB": "1", "PINFLOW_ARCHIVE_MEMORY_MB": "0"},
                    extra_args=extra,
                )
                server.home.mkdir()
                server.tokens = tokens
                servers.append(server)
                server.start()
            yield Stress(url, servers, tokens)
        finally:
            for server in servers:
                server.stop()


def test_concurrent_pushes_never_lose_an_object(stress: Stress, tmp_path: Path):
    started = time.monotonic()
    stress.servers[0].create_repo(REPO, strict=True)
    history = make_history(tmp_path / "source")
    clients = [Client(tmp_path / f"client-{i}", history.source) for i in range(LINES * 2 + 3)]
    seed = clients[0].push(stress.next_url(), history.base, "refs/heads/main")
    assert seed.landed, seed.text
    expected: dict[str, str] = {"refs/heads/main": history.base}
    kept: list[str] = []  # commits a force-push left to keep refs alone
    landed = refused = lost = swaps_lost = pushes = 0
    for r in range(ROUNDS):
        actions, checks = [], []
        for j in range(LINES):
            sha, ref = history.lines[j][r], f"refs/heads/l{j}"
            for k in range(2):
                client, url = clients[2 * j + k], stress.next_url()
                actions.append(partial(client.push, url, sha, ref))
            expected[ref] = sha
        extra = clients[LINES * 2 :]
        if kept:  # the kept commit's own pack, sent again, then refused
            actions.append(partial(extra[0].push, stress.next_url(), kept[-1], "refs/meta/kept"))
            checks.append("only branches")
        broken = partial(extra[1].push, stress.next_url(), history.broken[r], f"refs/heads/b{r}")
        actions.append(broken)
        checks.append("strict repository")
        tag, tagged = f"refs/tags/t{r}", history.lines[r % LINES][r]
        actions.append(partial(extra[2].push, stress.next_url(), tagged, tag))
        expected[tag] = tagged
        outcomes = at_once(actions)
        pushes += len(outcomes) + (r < ROUNDS - 1)
        for outcome in outcomes[: LINES * 2]:
            assert outcome.landed or outcome.lost_race, outcome.text
            landed += outcome.landed
            lost += outcome.lost_race
            swaps_lost += "failed to write" in outcome.text
        for j in range(LINES):
            assert any(o.landed for o in outcomes[2 * j : 2 * j + 2]), outcomes[2 * j].text
        for outcome, why in zip(outcomes[LINES * 2 : LINES * 2 + len(checks)], checks, strict=True):
            assert outcome.code != 0 and why in outcome.text, outcome.text
            refused += 1
        assert outcomes[-1].landed, outcomes[-1].text
        if r < ROUNDS - 1:  # one line back by a commit: a keep ref holds what it dropped
            j = r % LINES
            back = clients[0].push(
                stress.next_url(),
                history.lines[j][r - 1] if r else history.base,
                f"refs/heads/l{j}",
                force=True,
            )
            assert back.landed, back.text
            kept.append(history.lines[j][r])
            expected[f"refs/heads/l{j}"] = history.lines[j][r - 1] if r else history.base
    pushing = time.monotonic() - started

    db = Database(stress.url)
    try:
        with db.read() as session:
            refs = dict(session.execute(select(GitRef.name, GitRef.value)).all())
            states = dict(
                session.execute(select(GitPack.state, func.count()).group_by(GitPack.state)).all()
            )
        for ref, sha in expected.items():
            assert refs.get(ref) == sha, f"{ref} is {refs.get(ref)}, the reports say {sha}"
        keep = {name: sha for name, sha in refs.items() if name.startswith("refs/pinflow/keep/")}
        assert set(kept) <= set(keep.values()), "a force-pushed commit has no keep ref"
        assert "quarantine" not in states, f"packs left in quarantine: {states}"
        # Each round landed a pack of new objects per line: fewer live packs means the
        # pushes that crossed MAX_PACKS consolidated them, while the others pushed and read.
        assert LINES * ROUNDS > MAX_PACKS and states["live"] < LINES * ROUNDS, states
        objects = fsck(storage_for(db, tmp_path / "reader"), REPO)
    finally:
        db.dispose()

    fresh = ServerProcess(tmp_path / "fresh", stress.url, stress.servers[0].backend)
    fresh.home.mkdir()
    fresh.tokens = stress.tokens
    fresh.start()
    try:
        mirror = Git(tmp_path / "mirror")
        read_url = fresh.git_url(REPO, stress.tokens["read"])
        mirror.run("clone", "-q", "--mirror", read_url, ".")
        for sha in sorted(set(keep.values())):
            mirror.run("fetch", "-q", read_url, sha)
        mirror.run("fsck", "--full", "--strict")
        for sha in [*expected.values(), *keep.values()]:
            mirror.run("cat-file", "-e", f"{sha}^{{commit}}")
        source = Git(history.source)
        with fresh.api("read") as api:
            for sha in sorted(set(keep.values())):
                archive = api.get(f"/repos/{REPO}/archive/{sha}.tar.gz")
                assert archive.status_code == 200, archive.text
                with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
                    files = sorted(m.name for m in tar.getmembers() if m.isfile())
                listed = source.run("ls-tree", "-r", "--name-only", sha).stdout.split()
                assert files == sorted(listed)
    finally:
        fresh.stop()
    report(
        f"store integrity ({stress.servers[0].backend})",
        rounds=ROUNDS,
        pushes=pushes,
        landed=landed,
        lost_races=lost,
        of_them_after_sending_the_pack=swaps_lost,
        refused=refused,
        keep_refs=len(keep),
        live_packs=states["live"],
        objects_checked=objects,
        seconds_pushing=round(pushing, 1),
        seconds_total=round(time.monotonic() - started, 1),
    )

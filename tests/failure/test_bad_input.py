"""Bad input sweep (issue 7): fuzzed API requests, malformed git requests, the auth matrix.

Everything here is a request a client could send by mistake or on purpose. DESIGN.md's
contract: a 4xx with a JSON `detail` (for git, an error the git client shows), never a 500,
a dropped connection, or a repository left different or broken. SQLite only: what is tested
is request handling, which the backend does not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dulwich.protocol import PktLineParser, pkt_line
from sqlalchemy import select

from dagstore.access.scopes import SCOPES, grants
from dagstore.core.db import Database
from dagstore.git.repo import RepoStorage
from scheduler.models import DagRun, TaskInstance
from tests.conftest import cluster_for
from tests.support.cluster import Cluster
from tests.support.git import Git, clone, pack_objects
from tests.support.store import fsck, refs_of, storage_for

DAG_ID = "bad_input_flow"
FLOW = f"""
from pinflow import DAG, task

with DAG("{DAG_ID}", schedule=None):
    @task
    def first():
        return 1

    @task
    def second(value):
        return value + 1

    second(first())
"""


@pytest.fixture(scope="module", params=["sqlite"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Cluster]:
    """Server and Redis, so a trigger queues the first task; no scheduler or worker, so task
    instances stay in whatever state a test puts them."""
    yield from cluster_for(request, tmp_path_factory, schedulers=0, workers=0)


@dataclass
class Seeded:
    """A repo with a pushed DAG and one run of it, so fuzzed ids can hit real rows."""

    repo: str
    sha: str
    run_id: str
    ti_ids: list[int]


@pytest.fixture(scope="module")
def seeded(cluster: Cluster, tmp_path_factory) -> Seeded:
    work = cluster.repo("seeded", tmp_path_factory.mktemp("seeded") / "work")
    sha = cluster.push(work, "seed", **{"dags/flow.py": FLOW})
    run_id = cluster.trigger(DAG_ID)["run_id"]
    return Seeded("seeded", sha, run_id, [ti for ti, _ in _task_instances(cluster, run_id)])


def _task_instances(cluster: Cluster, run_id: str) -> list[tuple[int, int]]:
    """(id, try number) of a run's task instances, in task order; the API does not show ids."""
    db = Database(cluster.database_url)
    try:
        with db.read() as session:
            rows = session.execute(
                select(TaskInstance.id, TaskInstance.try_number)
                .join(DagRun, DagRun.id == TaskInstance.run_pk)
                .where(DagRun.run_id == run_id)
                .order_by(TaskInstance.id)
            )
            return [(ti, try_number) for ti, try_number in rows]
    finally:
        db.dispose()


# -- 1. schemathesis against the live schema, once per token scope ---------------------------

ST = str(Path(sys.executable).with_name("st"))
# Loaded by `st` through SCHEMATHESIS_HOOKS: DESIGN.md's error shape as a schemathesis check.
HOOKS = """
import json

import schemathesis


@schemathesis.check
def error_is_json_detail(ctx, response, case):
    if 400 <= response.status_code < 500:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        assert isinstance(body, dict) and "detail" in body, (
            f"{response.status_code} without a JSON detail: {response.content[:200]!r}"
        )
"""
# status_code_conformance: every answer's status is one the schema documents for that
# operation (`pinflow.openapi`). Left out on purpose: positive_data_acceptance (the schema does
# not state the sha, ref and repo-name rules, so schema-valid values get a 400).
CHECKS = (
    "not_a_server_error,error_is_json_detail,content_type_conformance,"
    "status_code_conformance,response_schema_conformance,response_headers_conformance"
)


def _schemathesis_config(seeded: Seeded) -> str:
    """Real ids offered often but not always, so fuzzed requests also get past the 404s."""
    values = {
        "repo": [seeded.repo],
        "sha": [seeded.sha, seeded.sha[:7], "main"],
        "path": ["dags/flow.py"],
        "dag_id": [DAG_ID],
        "run_id": [seeded.run_id],
        "task_id": ["first", "second"],
        "ti_id": seeded.ti_ids,
    }
    lines = ["[dictionaries]"]
    lines += [f"{name} = {{ values = {json.dumps(v)} }}" for name, v in values.items()]
    lines.append("[parameters]")
    for param, name in [*((n, n) for n in values), ("ref", "sha")]:
        lines.append(f'"path.{param}" = {{ dictionary = "{name}", probability = 0.7 }}')
    return "\n".join(lines) + "\n"


def test_schemathesis_with_every_scope(cluster: Cluster, seeded: Seeded, tmp_path: Path):
    """No 500 and no error without a JSON detail, whoever asks: admin gets every phase (all
    routes reachable), the other scopes a short fuzz of every route. Runs in parallel."""
    assert cluster.server is not None
    (tmp_path / "hooks.py").write_text(HOOKS)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_schemathesis_config(seeded))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(tmp_path / "hooks.py")}
    procs: dict[str | None, subprocess.Popen] = {}
    for scope in (*SCOPES, None):
        auth = ["-H", f"Authorization: Bearer {cluster.tokens[scope]}"] if scope else []
        depth = ["-n", "8"] if scope == "admin" else ["-n", "3", "--phases", "fuzzing"]
        cmd = [ST, "--config-file", str(config), "run", f"{cluster.server.url}/openapi.json"]
        cmd += [*auth, *depth, "--checks", CHECKS, "--seed", "7", "-w", "1"]
        cmd += ["--request-timeout", "20", "--output-truncate", "false"]
        with (tmp_path / f"st-{scope}.log").open("w") as log:
            procs[scope] = subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
            )
    failed = {}
    try:
        for scope, proc in procs.items():
            proc.wait(timeout=240)
            output = (tmp_path / f"st-{scope}.log").read_text()
            assert " generated, " in output, output[-3000:]  # it really ran cases
            if proc.returncode != 0:
                failed[scope] = output[-6000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not failed, "\n\n".join(f"=== scope {s}\n{out}" for s, out in failed.items())


# -- 2. malformed git requests ----------------------------------------------------------------

ZERO = "0" * 40


@dataclass
class Victim:
    """The repo malformed requests are aimed at, and a work tree that pushes to it normally."""

    name: str
    work: Git
    storage: RepoStorage

    def refs(self) -> dict[bytes, bytes]:
        return refs_of(self.storage, self.name)

    def tip(self) -> str:
        return self.refs()[b"refs/heads/main"].decode()


@pytest.fixture(scope="module")
def victim(cluster: Cluster, tmp_path_factory) -> Iterator[Victim]:
    work = cluster.repo("victim", tmp_path_factory.mktemp("victim") / "work")
    cluster.push(work, "base", **{"a.txt": "base\n"})
    db = Database(cluster.database_url)
    try:
        yield Victim("victim", work, storage_for(db, tmp_path_factory.mktemp("reader")))
    finally:
        db.dispose()


@dataclass
class Pieces:
    """What a malformed request is cut from: the tip, a real unpushed commit and its pack,
    a blob and its pack, an empty pack."""

    tip: str
    new: str
    pack: bytes
    blob: str
    blob_pack: bytes
    empty: bytes


def _pieces(victim: Victim) -> Pieces:
    tip = victim.tip()
    new = victim.work.commit("never lands in one piece", **{"b.txt": uuid.uuid4().hex})
    victim.work.write("blob.txt", uuid.uuid4().hex)
    blob = victim.work.run("hash-object", "-w", "blob.txt").stdout.strip()
    return Pieces(
        tip=tip,
        new=new,
        pack=pack_objects(victim.work, f"{new}\n^{tip}\n", "--revs"),
        blob=blob,
        blob_pack=pack_objects(victim.work, f"{blob}\n"),
        empty=pack_objects(victim.work, ""),
    )


def _update(old: str, new: str, ref: str = "refs/heads/main") -> bytes:
    """One ref-update command and the flush, as git sends them (without side-band, so the
    report comes back as plain pkt-lines)."""
    return pkt_line(f"{old} {new} {ref}\0report-status\n".encode()) + pkt_line(None)


def _want(sha: str) -> bytes:
    return pkt_line(f"want {sha} side-band-64k thin-pack ofs-delta\n".encode())


def _flipped_checksum(pack: bytes) -> bytes:
    return pack[:-1] + bytes([pack[-1] ^ 0xFF])


Body = Callable[[Pieces], bytes]
COMMON: dict[str, Body] = {
    "garbage pkt-lines": lambda p: b"zzzz this is not a pkt-line",
    "oversized pkt-line length": lambda p: b"ffff" + b"x" * 10,
    "empty body": lambda p: b"",
}
RECEIVE: dict[str, Body] = {
    **COMMON,
    "a pkt-line that is no ref update": lambda p: pkt_line(b"hello world!\n") + pkt_line(None),
    "truncated pack": lambda p: _update(p.tip, p.new) + p.pack[: len(p.pack) // 2],
    "pack with a bad checksum": lambda p: _update(p.tip, p.new) + _flipped_checksum(p.pack),
    "ref updates without a pack": lambda p: _update(p.tip, p.new),
    "branch to a missing object": lambda p: _update(p.tip, "1" * 40) + p.empty,
    "new branch at a missing object": lambda p: _update(ZERO, "2" * 40, "refs/heads/x") + p.empty,
    "branch to a blob": lambda p: _update(p.tip, p.blob) + p.blob_pack,
    "new branch at a blob": lambda p: _update(ZERO, p.blob, "refs/heads/y") + p.blob_pack,
    "new tag at a missing object": lambda p: _update(ZERO, "3" * 40, "refs/tags/t") + p.empty,
    "dot-dot ref name": lambda p: _update(ZERO, p.tip, "refs/heads/../../HEAD") + p.empty,
}
UPLOAD: dict[str, Body] = {
    **COMMON,
    "want of an unknown object": lambda p: _want("1" * 40) + pkt_line(None) + pkt_line(b"done\n"),
    "want list cut short": lambda p: _want(p.tip),
}
GIT_CASES = {"git-receive-pack": RECEIVE, "git-upload-pack": UPLOAD}


def _replies(body: bytes) -> list[bytes]:
    lines: list[bytes] = []
    PktLineParser(lambda pkt: lines.append(pkt) if pkt is not None else None).parse(body)
    return lines


def _refused(replies: list[bytes]) -> bool:
    """An `ERR` git shows as a remote error, or a report where nothing was accepted."""
    if any(line.startswith(b"ERR ") for line in replies):
        return True
    unpack = [line for line in replies if line.startswith(b"unpack ")]
    failed = any(line.startswith(b"ng ") for line in replies) or unpack != [b"unpack ok\n"]
    return bool(replies) and failed and not any(line.startswith(b"ok ") for line in replies)


@pytest.mark.parametrize(
    ("service", "case"), [(service, case) for service, cases in GIT_CASES.items() for case in cases]
)
def test_malformed_git_request(
    cluster: Cluster, victim: Victim, tmp_path: Path, service: str, case: str
):
    """Refused with an error git shows, the refs untouched, the repo whole, pushes still land."""
    assert cluster.server is not None
    body = GIT_CASES[service][case](_pieces(victim))
    refs = victim.refs()  # keep refs included
    log_size = len(cluster.server.server_log())
    response = httpx.post(
        f"{cluster.server.url}/git/{victim.name}.git/{service}",
        content=body,
        auth=("x", cluster.tokens["push"]),
        headers={"Content-Type": f"application/x-{service}-request"},
        timeout=30,
    )
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert _refused(_replies(response.content)), response.content[:500]
    assert "Traceback" not in cluster.server.server_log()[log_size:]
    assert victim.refs() == refs
    assert fsck(victim.storage, victim.name) > 0
    fresh = clone(cluster.server.git_url(victim.name, cluster.tokens["read"]), tmp_path / "c")
    assert fresh.returncode == 0, fresh.stderr
    Git(tmp_path / "c").run("fsck", "--full")
    sha = cluster.push(victim.work, "an ordinary push", **{"a.txt": uuid.uuid4().hex})
    assert victim.tip() == sha


# -- 3. who may do what ------------------------------------------------------------------------

ACTIONS = {  # action -> the scope it needs
    "push": "push",
    "clone": "read",
    "archive": "read",
    "trigger": "trigger",
    "claim": "worker",
    "heartbeat": "worker",
    "finish": "worker",
}
CREDENTIALS = (None, "bogus", "revoked", *SCOPES)
GIT_SAYS = {  # what the git client shows for each refusal
    None: "could not read Username",  # no password: git would prompt, and may not
    401: "invalid or revoked token",
    403: "does not allow",
}


def _secret(cluster: Cluster, credential: str | None) -> str | None:
    if credential == "bogus":
        return "pf_" + "x" * 43
    return cluster.tokens[credential] if credential else None


def _git_action(
    cluster: Cluster, action: str, secret: str | None, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    assert cluster.server is not None
    url = cluster.server.git_url("seeded", secret)
    if action == "clone":
        return clone(url, tmp_path / "clone")
    work = Git(tmp_path / "work").init()
    work.commit("matrix", **{"m.txt": uuid.uuid4().hex})
    return work.run("push", url, f"HEAD:refs/heads/m-{uuid.uuid4().hex[:8]}", check=False)


def _http_action(
    cluster: Cluster, seeded: Seeded, action: str
) -> tuple[str, str, dict | None, str | None]:
    """(method, path, body, run id) of the request; for the worker endpoints, a fresh run with
    its first task queued (claim) or running (heartbeat, finish), so only the token decides."""
    if action == "archive":
        return "GET", f"/repos/{seeded.repo}/archive/{seeded.sha}.tar.gz", None, None
    if action == "trigger":
        return "POST", f"/dags/{DAG_ID}/runs", {}, None
    run_id = cluster.trigger(DAG_ID)["run_id"]
    ti, try_number = _task_instances(cluster, run_id)[0]
    body = {"try_number": try_number, "worker": "matrix"}
    if action != "claim":
        with cluster.api("worker") as api:
            assert api.post(f"/task-instances/{ti}/claim", json=body).status_code == 200
        body = {"try_number": try_number}
        if action == "finish":
            body.update(state="success", result=1)
    return "POST", f"/task-instances/{ti}/{action}", body, run_id


@pytest.mark.parametrize("credential", CREDENTIALS, ids=str)
@pytest.mark.parametrize("action", ACTIONS)
def test_authorization_matrix(
    cluster: Cluster, seeded: Seeded, tmp_path: Path, action: str, credential: str | None
):
    """No, bogus or revoked token: 401; a scope that does not grant the action: 403; the
    right scope (or one implying it): allowed. A refused worker call leaves its task as is."""
    assert cluster.server is not None
    if credential in (None, "bogus", "revoked"):
        expected = 401
    else:
        expected = 200 if grants(credential, ACTIONS[action]) else 403
    secret = _secret(cluster, credential)
    if action in ("push", "clone"):
        result = _git_action(cluster, action, secret, tmp_path)
        assert (result.returncode == 0) == (expected == 200), result.stderr
        if expected != 200:
            assert GIT_SAYS[None if secret is None else expected] in result.stderr, result.stderr
        return
    method, path, body, run_id = _http_action(cluster, seeded, action)
    before = cluster.run(run_id)["tasks"] if run_id else None
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    with httpx.Client(base_url=f"{cluster.server.url}/api/v1", timeout=30) as api:
        response = api.request(method, path, json=body, headers=headers)
    if expected == 200:
        assert response.status_code == (201 if action == "trigger" else 200), response.text
        return
    assert response.status_code == expected, response.text
    assert response.json()["detail"]
    if run_id:
        assert cluster.run(run_id)["tasks"] == before

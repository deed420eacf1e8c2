"""The store's HTTP API against a real server: archives, files, refs, versions, bad input."""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from dulwich.repo import Repo

from dagstore.git.archive import write_archive
from tests.support.git import Git, clone
from tests.support.server import ServerProcess


@pytest.fixture
def pushed(store_server: ServerProcess, tmp_path: Path, repo_name: str) -> tuple[Git, str]:
    """A repo with the awkward cases an archive must keep: modes, links, deep and odd names."""
    store_server.create_repo(repo_name)
    work = Git(tmp_path / "work").init()
    work.write("dags/etl.py", "from helpers import x\n")
    work.write("dags/helpers.py", "x = 1\n")
    work.write("bin/run.sh", "#!/bin/sh\necho hi\n", executable=True)
    work.write("empty.txt", "")
    work.write("ünïcode dir/naïve file.txt", "unicode\n")
    work.write("deep/" + "d" * 60 + "/" + "e" * 60 + "/file.py", "deep = True\n")
    (work.path / "link.py").symlink_to("dags/etl.py")
    work.commit("awkward files")
    push = work.run("push", store_server.git_url(repo_name, store_server.tokens["push"]), "main")
    assert push.returncode == 0
    return work, work.head()


def _members(data: bytes) -> dict[str, tuple[str, int, bytes | str]]:
    """name -> (kind, exec bit, content or link target) of a tar.gz."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.type == tarfile.XGLTYPE or m.name == "pax_global_header":
                continue
            name = m.name.rstrip("/")
            if m.isdir():
                out[name] = ("dir", 0, b"")
            elif m.issym():
                out[name] = ("link", 0, m.linkname)
            else:
                out[name] = ("file", m.mode & 0o100, tar.extractfile(m).read())
    return out


def test_archive_equals_git_archive(store_server, pushed, repo_name):
    work, sha = pushed
    with store_server.api("read") as api:
        response = api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz")
    assert response.status_code == 200
    expected = subprocess.run(
        ["git", "archive", "--format=tar.gz", sha], cwd=work.path, capture_output=True, check=True
    ).stdout
    ours, theirs = _members(response.content), _members(expected)
    assert ours == theirs
    assert ours["bin/run.sh"][1] == 0o100
    assert ours["link.py"] == ("link", 0, "dags/etl.py")


def test_archive_is_deterministic_immutable_and_verifiable(
    store_server, pushed, repo_name, tmp_path
):
    _, sha = pushed
    with store_server.api("read") as api:
        first = api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz")
        second = api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz")
        digest = hashlib.sha256(first.content).hexdigest()
        assert first.content == second.content
        assert first.headers["x-pinflow-archive-sha256"] == digest
        assert first.headers["etag"] == f'"{digest}"'
        assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert first.headers["content-type"] == "application/gzip"
        cached = api.get(
            f"/repos/{repo_name}/archive/{sha}.tar.gz", headers={"If-None-Match": f'"{digest}"'}
        )
        assert cached.status_code == 304
        assert cached.content == b""
        stale = api.get(
            f"/repos/{repo_name}/archive/{sha}.tar.gz", headers={"If-None-Match": '"other"'}
        )
        assert stale.status_code == 200
    # Rebuilt from scratch elsewhere (a clone of the repo), the bytes are the same: any
    # server can answer.
    copy = tmp_path / "copy.git"
    cloned = clone(store_server.git_url(repo_name, store_server.tokens["read"]), copy, "--bare")
    assert cloned.returncode == 0, cloned.stderr
    with Repo(str(copy)) as repo:
        buffer = io.BytesIO()
        write_archive(repo, repo[sha.encode()], buffer)
    assert buffer.getvalue() == first.content
    with gzip.open(io.BytesIO(first.content)) as gz:
        header = gz.read(512)
    assert b"root" not in header


def test_files_endpoint(store_server, pushed, repo_name):
    _, sha = pushed
    with store_server.api("read") as api:
        ok = api.get(f"/repos/{repo_name}/files/{sha}/dags/helpers.py")
        assert ok.status_code == 200
        assert ok.content == b"x = 1\n"
        assert "immutable" in ok.headers["cache-control"]
        assert api.get(f"/repos/{repo_name}/files/{sha}/ünïcode dir/naïve file.txt").content == (
            b"unicode\n"
        )
        assert api.get(f"/repos/{repo_name}/files/{sha}/dags").status_code == 404
        assert api.get(f"/repos/{repo_name}/files/{sha}/nope.py").status_code == 404
        assert api.get(f"/repos/{repo_name}/files/{sha}/dags/etl.py/x").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "dags/../../x",
        "%2e%2e/x",
        "dags/%2E%2E/%2e%2e/x",
        "/etc/passwd",
        "dags//etl.py",
        "./dags/etl.py",
        "dags\\etl.py",
        "dags/%00",
    ],
)
def test_files_path_traversal_refused(store_server, pushed, repo_name, path):
    _, sha = pushed
    target = f"/api/v1/repos/{repo_name}/files/{sha}/{path}".encode()
    with store_server.api("read") as api:
        # Sent as typed: httpx would otherwise normalise the dot segments away.
        response = api.get(store_server.url + "/", extensions={"target": target})
    assert response.status_code in (400, 404), response.text
    assert "detail" in response.json()


def test_resolve(store_server, pushed, repo_name):
    work, sha = pushed
    work.run("tag", "light")
    work.run("tag", "-a", "annotated", "-m", "release")
    work.run("push", store_server.git_url(repo_name, store_server.tokens["push"]), "--tags")
    with store_server.api("read") as api:
        for spec in (
            "main",
            "refs/heads/main",
            "light",
            "annotated",
            sha,
            sha[:7],
            sha[:4].upper(),
        ):
            response = api.get(f"/repos/{repo_name}/resolve/{spec}")
            assert response.status_code == 200, (spec, response.text)
            assert response.json() == {"sha": sha}
        assert api.get(f"/repos/{repo_name}/resolve/nosuchbranch").status_code == 404
        assert api.get(f"/repos/{repo_name}/resolve/{'0' * 40}").status_code == 404
        assert api.get(f"/repos/{repo_name}/resolve/bad%20ref").status_code == 400
        assert api.get(f"/repos/{repo_name}/resolve/a..b").status_code == 400


def test_versions_record_every_pushed_commit(store_server, tmp_path, repo_name):
    store_server.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    shas = [work.commit(f"commit {i}\n\nbody {i}", **{"a.py": f"{i}\n"}) for i in range(3)]
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    result = work.run("push", url, "main")
    assert "recorded 3 new version(s)" in result.stderr
    with store_server.api("read") as api:
        items = api.get(f"/repos/{repo_name}/versions").json()["items"]
    assert [v["sha"] for v in items] == shas[::-1]
    newest = items[0]
    assert newest["ref"] == "refs/heads/main"
    assert newest["author"] == "Ada Author <ada@example.com>"
    assert newest["message"].startswith("commit 2")
    assert newest["pushed_at"].endswith("Z")
    assert newest["dags"] == [] and newest["errors"] == []
    # A branch pointing at known commits records nothing new.
    again = work.run("push", url, "main:refs/heads/copy")
    assert "recorded" not in again.stderr
    with store_server.api("read") as api:
        assert len(api.get(f"/repos/{repo_name}/versions").json()["items"]) == 3


def test_repos_create_and_list(store_server, repo_name):
    with store_server.api("admin") as api:
        created = api.post("/repos", json={"name": repo_name, "track": "prod", "strict": True})
        assert created.status_code == 201
        body = created.json()
        assert body["track"] == "prod" and body["strict"] is True
        assert body["git_url"] == f"{store_server.url}/git/{repo_name}.git"
        assert api.post("/repos", json={"name": repo_name}).status_code == 409
        names = [r["name"] for r in api.get("/repos").json()["items"]]
    assert repo_name in names


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "scope", "status"),
    [
        ("GET", "/repos", {}, None, 401),
        ("GET", "/repos", {}, "revoked", 401),
        ("GET", "/repos", {}, "bogus", 401),
        ("GET", "/repos", {}, "trigger", 403),
        ("POST", "/repos", {"json": {"name": "x1"}}, "push", 403),
        ("POST", "/repos", {"json": {"name": "x1"}}, "read", 403),
        (
            "POST",
            "/repos",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            "admin",
            400,
        ),
        ("POST", "/repos", {"json": {"name": "../evil"}}, "admin", 400),
        ("POST", "/repos", {"json": {"name": "a.git"}}, "admin", 400),
        ("POST", "/repos", {"json": {"name": "x" * 101}}, "admin", 400),
        ("POST", "/repos", {"json": {"name": "ok-name", "track": "../x"}}, "admin", 400),
        ("POST", "/repos", {"json": {"name": 5}}, "admin", 400),
        ("POST", "/repos", {"json": []}, "admin", 400),
        ("GET", "/repos/bad..name/refs", {}, "read", 400),
        ("GET", "/repos/nosuchrepo/refs", {}, "read", 404),
        ("GET", "/repos/nosuchrepo/versions", {}, "read", 404),
        ("GET", "/repos/nosuchrepo/archive/" + "a" * 40 + ".tar.gz", {}, "read", 404),
        ("GET", "/repos/{repo}/archive/abc.tar.gz", {}, "read", 400),
        ("GET", "/repos/{repo}/archive/" + "A" * 40 + ".tar.gz", {}, "read", 400),
        ("GET", "/repos/{repo}/archive/" + "a" * 40 + ".tar.gz", {}, "read", 404),
        ("GET", "/repos/{repo}/archive/" + "a" * 40 + ".tar.gz", {}, None, 401),
        ("GET", "/repos/{repo}/archive/" + "a" * 40 + ".tar.gz", {}, "trigger", 403),
        ("GET", "/repos/{repo}/files/main/a.py", {}, "read", 400),
        ("GET", "/repos/{repo}/files/" + "b" * 40 + "/a.py", {}, "read", 404),
        ("GET", "/repos/{repo}/versions?limit=abc", {}, "read", 400),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    store_server, pushed, repo_name, method, path, kwargs, scope, status
):
    token = {"bogus": "pf_nope"}.get(scope or "", store_server.tokens.get(scope or ""))
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with store_server.api(None) as api:
        response = api.request(method, path.format(repo=repo_name), headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)


def test_malformed_json_says_so_and_where(store_server):
    """Not FastAPI's "1: JSON decode error": what is wrong, and at which character."""
    with store_server.api("admin") as api:
        response = api.post(
            "/repos", content=b'{"name": "x",,}', headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("request body is not valid JSON (at character 13"), detail


def test_the_schema_documents_the_errors_operations_answer(store_server):
    """No 422 (pinflow answers 400), each operation's own errors with DESIGN.md's shape, and a
    summary of its own (not FastAPI's title-cased function name)."""
    import httpx

    schema = httpx.get(f"{store_server.url}/openapi.json").json()
    assert "422" not in str(schema) and "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            where, codes = f"{method.upper()} {path}", set(op["responses"])
            words = op["summary"].split()  # a sentence, not FastAPI's "Get Repos"
            assert len(words) >= 3 and any(w.islower() for w in words[1:]), (where, words)
            if op.get("security"):
                assert {"401", "403"} <= codes, where
            if any(p["in"] == "path" for p in op.get("parameters", [])):
                assert {"400", "404"} <= codes, where
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and code != "304":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    # /healthz answers its 503 in its own shape, for load balancers
                    own = "/Health" if path == "/api/v1/healthz" and code == "503" else None
                    assert ref.endswith(own or "/ErrorBody"), (where, code)
    claim = schema["paths"]["/api/v1/task-instances/{ti_id}/claim"]["post"]
    assert "409" in claim["responses"]


def test_every_answer_has_a_typed_schema(store_server):
    """Each success answer is a named model whose every object declares its fields: no
    `additionalProperties: true` (FastAPI's schema for a route returning `dict[str, Any]`),
    so schemathesis' response_schema_conformance checks what the fields are."""
    import httpx

    schema = httpx.get(f"{store_server.url}/openapi.json").json()
    models = schema["components"]["schemas"]

    def untyped(node: object, where: str) -> list[str]:
        if isinstance(node, dict):
            if node.get("additionalProperties") is True or node == {"type": "object"}:
                return [where]
            return [w for k, v in node.items() for w in untyped(v, f"{where}.{k}")]
        if isinstance(node, list):
            return [w for i, v in enumerate(node) for w in untyped(v, f"{where}[{i}]")]
        return []

    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            for code, response in op["responses"].items():
                content = response.get("content", {})
                if not code.startswith("2") or "application/json" not in content:
                    continue
                ref = content["application/json"]["schema"].get("$ref", "")
                assert ref.startswith("#/components/schemas/"), (where, code, content)
                model = ref.rsplit("/", 1)[1]
                assert "_" not in model, (where, model)  # a name, not `Items_Repo_`
    open_ended = {
        # JSON the user chose: a run's conf, a task's result and upstream results.
        "Run.properties.conf", "RunSummary.properties.conf", "Cleared.properties.conf",
        "Canceled.properties.conf", "TaskSpec.properties.conf",
        "TaskSpec.properties.upstream_results", "TriggerRequest.properties.conf",
        "TaskSpec.properties.map_values",  # a mapped instance's elements of upstream results
    }
    found = {w for name, model in models.items() for w in untyped(model, name)}
    assert found <= open_ended, found - open_ended
    assert models["Run"]["additionalProperties"] is False
    assert set(models["Run"]["required"]) >= {"run_id", "dag_id", "sha", "state", "tasks", "shas"}
    states = models["RunSummary"]["properties"]["state"]["enum"]
    assert states == ["queued", "running", "success", "failed", "canceled"]


def test_health_and_metrics(store_server):
    with store_server.api(None) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
    import httpx

    assert httpx.get(f"{store_server.url}/healthz").status_code == 200
    assert "python_info" in httpx.get(f"{store_server.url}/metrics").text


def test_no_tracebacks_in_server_log(store_server):
    """Runs last in this module: nothing above made the server raise."""
    assert "Traceback" not in store_server.server_log()

"""The UI's pages against what pushers and triggerers write (issue 25: finding 5 of security
review 2 and its untried list): path parts of URLs escaped whole (`/` included), import
errors, file names and run conf shown as text, never as markup.

Over HTTP with a session cookie, as a browser sends it; URLs in the pages are resolved the
way a browser resolves them (`urljoin` removes `..` segments as the URL standard does).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from urllib.parse import quote, urljoin

import httpx
import pytest
from sqlalchemy import select

from dagstore.core.db import Database
from dagstore.core.models import Dag, Repo
from tests.support.git import Git
from tests.support.server import ServerProcess, start_server

PAYROLL = """# pinflow DAG
from pinflow import DAG, task
with DAG("{dag_id}", schedule=None):
    @task
    def pay():
        return 1
    pay()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("ui-escaping"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def web(server: ServerProcess) -> Iterator[httpx.Client]:
    """A browser's session: logged in with the admin token."""
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        login = client.post("/login", data={"token": server.tokens["admin"], "next": "/"})
        assert login.status_code == 303, login.text
        yield client


def pushed(server: ServerProcess, repo: str, path: Path, files: dict[str, str]) -> str:
    server.create_repo(repo)
    work = Git(path).init()
    for rel, text in files.items():
        work.write(rel, text)
    sha = work.commit("files")
    work.run("push", server.git_url(repo, server.tokens["push"]), "main")
    return sha


def paused(server: ServerProcess, dag_id: str) -> bool:
    with server.api("read") as api:
        return api.get(f"/dags/{dag_id}").json()["is_paused"]


def test_a_stored_dag_id_with_slashes_stays_one_url_segment(server, web, tmp_path, uid):
    """A row stored before the parse checked ids again (the review stored `zz/../payroll`):
    its pause form must post to its own DAG, not to the one a browser reaches by resolving
    `..` (the other repository's `payroll`)."""
    victim, forged = f"payroll_{uid}", f"zz/../payroll_{uid}"
    pushed(server, f"victims{uid}", tmp_path / "v", {"dags/p.py": PAYROLL.format(dag_id=victim)})
    server.create_repo(f"evil{uid}")
    db = Database(server.database_url)
    try:
        with db.write() as session:
            real = session.scalars(select(Dag).where(Dag.dag_id == victim)).one()
            evil = session.scalars(select(Repo).where(Repo.name == f"evil{uid}")).one()
            session.add(
                Dag(dag_id=forged, repo_id=evil.id, fileloc="dags/f.py", structure=real.structure,
                    structure_hash=real.structure_hash, is_active=True, is_paused=False)
            )  # fmt: skip
    finally:
        db.dispose()
    page = web.get("/").text
    forms = re.findall(r'<form method="post" action="([^"]*/paused)"[^>]*>\s*<input[^>]*'
                       r'name="csrf" value="([^"]*)"', page)  # fmt: skip
    (action, csrf) = next((a, c) for a, c in forms if "zz" in a)
    target = urljoin(f"{server.url}/", unescape(action))  # where a browser posts it
    clicked = web.post(target, data={"csrf": csrf, "paused": "true"})
    assert clicked.status_code in (303, 404), clicked.text
    assert not paused(server, victim), "the forged row's pause button paused another repo's DAG"
    assert unescape(action) == f"/dags/{quote(forged, safe='')}/paused"
    assert f'href="/dags/{quote(forged, safe="")}"' in page


def test_import_errors_and_file_names_are_text_not_markup(server, web, tmp_path, uid):
    repo = f"xss{uid}"
    sha = pushed(
        server,
        repo,
        tmp_path / "x",
        {
            "dags/boom.py": 'raise RuntimeError("<script>alert(1)</script>")  # pinflow DAG\n',
            "dags/<img src=x onerror=alert(2)>.py": "def broken(:  # pinflow DAG\n",
        },
    )
    for path in ("/", f"/repos/{repo}/versions"):
        page = web.get(path).text
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page, path
        assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page, path
    versions = web.get(f"/repos/{repo}/versions").text
    link = f"/repos/{repo}/files/{sha}/dags/{quote('<img src=x onerror=alert(2)>.py', safe='')}"
    assert f'href="{link}"' in versions, "the broken file's link is not its escaped path"
    assert web.get(link).status_code == 200, "the escaped link does not reach the file"


def test_run_conf_is_text_not_markup(server, web, tmp_path, uid):
    dag_id = f"conf_{uid}"
    pushed(server, f"conf{uid}", tmp_path / "c", {"dags/c.py": PAYROLL.format(dag_id=dag_id)})
    conf = {"note": "</pre><script>alert(3)</script>", "<b>key</b>": "'\"&"}
    with server.api("trigger") as api:
        run = api.post(f"/dags/{dag_id}/runs", json={"conf": conf})
    assert run.status_code == 201, run.text
    page = web.get(f"/runs/{quote(run.json()['run_id'], safe='')}").text
    assert "<script>alert(3)" not in page and "</pre><script>" not in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(3)" in page
    assert "<b>key</b>" not in page

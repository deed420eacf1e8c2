"""The git endpoint against hostile requests (issue 14): paths, compressed bodies, pack bombs,
refs, names. Each is refused with a 4xx or git's normal refusal; nothing is left behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dulwich.protocol import pkt_line
from sqlalchemy import func, select

from dagstore.core.db import Database
from dagstore.git.models import GitPack
from tests.support.git import Git, pack_objects
from tests.support.server import ServerProcess, start_server

ZERO = "0" * 40
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A 1 MiB push limit, so that small bodies can carry too much."""
    server = start_server(tmp_path_factory.mktemp("hard"), PINFLOW_MAX_PUSH_BYTES=str(LIMIT))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pushed(server: ServerProcess, repo_name: str, tmp_path: Path) -> tuple[Git, str]:
    server.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    sha = work.commit("base", **{"a.py": "0\n"})
    work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
    return work, sha


def post(server: ServerProcess, path: str, body: bytes, scope: str = "push", **headers: str):
    service = path.rsplit("/", 1)[-1]
    return httpx.post(
        f"{server.url}/git/{path}",
        content=body,
        auth=("x", server.tokens[scope]),
        headers={"Content-Type": f"application/x-{service}-request", **headers},
        timeout=60,
    )


def tip(server: ServerProcess, repo: str) -> str | None:
    with server.api("read") as api:
        return api.get(f"/repos/{repo}/refs").json()["refs"].get("refs/heads/main")


def packs(server: ServerProcess) -> int:
    db = Database(server.database_url)
    try:
        with db.read() as session:
            return session.scalar(select(func.count()).select_from(GitPack)) or 0
    finally:
        db.dispose()


def incoming(server: ServerProcess) -> list[Path]:
    folder = server.home / "cache" / "server" / "packs" / "incoming"
    return sorted(folder.iterdir()) if folder.exists() else []


def update(old: str, new: str, ref: str = "refs/heads/main") -> bytes:
    return pkt_line(f"{old} {new} {ref}\0report-status\n".encode()) + pkt_line(None)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "{repo}.git//git-receive-pack"),  # was checked as a read
        ("POST", "{repo}.git/x/git-receive-pack"),
        ("GET", "{repo}.git/info/refs"),  # the dumb protocol: not served
        ("GET", "{repo}.git/info/refs?service=git-upload-archive"),
        ("GET", "{repo}.git/HEAD"),
        ("GET", "{repo}.git/git-receive-pack"),
        ("POST", "{repo}.git/info/refs?service=git-receive-pack"),
    ],
)
def test_only_canonical_smart_http_paths_are_answered(server, pushed, repo_name, method, path):
    work, sha = pushed
    new = work.commit("more", **{"b.py": "1\n"})
    body = update(sha, new) + pack_objects(work, f"{new}\n^{sha}\n", "--revs")
    response = httpx.request(
        method,
        f"{server.url}/git/{path.format(repo=repo_name)}",
        content=body if method == "POST" else None,
        auth=("x", server.tokens["read"]),
        headers={"Content-Type": "application/x-git-receive-pack-request"},
        timeout=30,
    )
    assert response.status_code == 404, response.text
    assert tip(server, repo_name) == sha


def test_odd_repository_names_are_a_404(server):
    for name in ("x.git.git", "..", "a.lock", "-x"):
        response = httpx.get(
            f"{server.url}/git/{name}.git/info/refs?service=git-upload-pack",
            auth=("x", server.tokens["read"]),
            timeout=10,
        )
        assert response.status_code == 404, (name, response.status_code, response.text)
    assert "Traceback" not in server.server_log()


def test_a_small_gzip_body_cannot_carry_a_large_pack(server, pushed, repo_name):
    """An uncompressed 8 MiB pack gzips to a few KiB: the limit counts what is inflated."""
    work, sha = pushed
    work.write("zeros.bin", b"\0" * (8 * LIMIT))
    new = work.commit("zeros")
    pack = pack_objects(work, f"{new}\n^{sha}\n", "--revs", "--compression=0")
    assert len(pack) > 8 * LIMIT
    body = gzip.compress(update(sha, new) + pack)
    assert len(body) < 64 * 1024
    before = packs(server)
    response = post(
        server, f"{repo_name}.git/git-receive-pack", body, **{"Content-Encoding": "gzip"}
    )
    assert response.status_code < 500
    assert b"larger than the store's limit" in response.content, response.content[:300]
    assert tip(server, repo_name) == sha and packs(server) == before
    assert incoming(server) == []


def test_a_fetch_request_body_is_limited_too(server, pushed, repo_name):
    _, sha = pushed
    body = pkt_line(f"want {sha} side-band-64k thin-pack ofs-delta\n".encode()) + pkt_line(None)
    body += b"".join(pkt_line(f"have {'1' * 40}\n".encode()) for _ in range(400_000))
    response = post(server, f"{repo_name}.git/git-upload-pack", body, scope="read")
    assert response.status_code < 500
    assert b"larger than the store's limit" in response.content, response.content[:300]


def bomb_pack(size: int) -> tuple[bytes, str]:
    """One blob of `size` zero bytes: a few hundred KiB on the wire."""
    header = bytearray()
    c, rest = (3 << 4) | (size & 15), size >> 4
    while rest:
        header.append(c | 0x80)
        c, rest = rest & 0x7F, rest >> 7
    header.append(c)
    compress, blob_sha = zlib.compressobj(), hashlib.sha1(b"blob %d\0" % size)
    body = bytearray()
    piece = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        body += compress.compress(piece)
        blob_sha.update(piece)
    body += compress.flush()
    pack = b"PACK" + struct.pack(">II", 2, 1) + bytes(header) + bytes(body)
    return pack + hashlib.sha1(pack).digest(), blob_sha.hexdigest()


def peak_rss_growth_mib(pid: int, action) -> float:
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    before = int(status["VmRSS"].split()[0])
    action()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(status["VmHWM"].split()[0]) - before) / 1024


def test_a_pack_bomb_is_refused_before_it_is_inflated(server, pushed, repo_name):
    _, sha = pushed
    pack, blob = bomb_pack(280 * LIMIT)
    assert len(pack) < LIMIT  # under the push limit on the wire
    responses = []
    assert server.proc is not None
    growth = peak_rss_growth_mib(
        server.proc.pid,
        lambda: responses.append(
            post(server, f"{repo_name}.git/git-receive-pack", update(sha, blob) + pack)
        ),
    )
    (response,) = responses
    assert response.status_code < 500
    assert b"over the store's limit" in response.content, response.content[:300]
    assert growth < 64, f"the server grew by {growth:.0f} MiB"
    assert tip(server, repo_name) == sha and incoming(server) == []


def test_only_branches_and_tags_can_be_pushed(server, pushed, repo_name):
    work, sha = pushed
    url = server.git_url(repo_name, server.tokens["push"])
    for ref in ("refs/foo", "refs/notes/commits", "refs/remotes/origin/main"):
        result = work.run("push", url, f"HEAD:{ref}", check=False)
        assert result.returncode != 0 and "only branches" in result.stderr, (ref, result.stderr)
    work.run("tag", "v1")
    both = work.run("push", url, "HEAD:refs/heads/side", "HEAD:refs/odd/x", "v1", check=False)
    assert "-> side" in both.stderr and "[new tag]" in both.stderr, both.stderr
    assert "[remote rejected] HEAD -> refs/odd/x" in both.stderr
    with server.api("read") as api:
        refs = api.get(f"/repos/{repo_name}/refs").json()["refs"]
    assert set(refs) == {"refs/heads/main", "refs/heads/side", "refs/tags/v1"}
    assert "Traceback" not in server.server_log()


# --- issue 25: the review's untried list (upload-pack, chunked bodies, deltas, .gitmodules) ---


def entry_header(kind: int, size: int) -> bytes:
    """A pack entry's type-and-size varint."""
    out, c, rest = bytearray(), (kind << 4) | (size & 15), size >> 4
    while rest:
        out.append(c | 0x80)
        c, rest = rest & 0x7F, rest >> 7
    out.append(c)
    return bytes(out)


def varint(n: int) -> bytes:
    """A delta header's size: 7 bits a byte, least significant first."""
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes([*out, n])


def delta_bomb_pack(result_size: int) -> bytes:
    """A 64 KiB blob and a delta on it that copies it `result_size` / 64 KiB times: one byte
    per copy (offset 0, size 0 meaning 64 KiB), so a few KiB declare hundreds of MiB."""
    base = b"\0" * 0x10000
    delta = varint(len(base)) + varint(result_size) + b"\x80" * (result_size // len(base))
    first = entry_header(3, len(base)) + zlib.compress(base)
    offset = len(first)  # the delta's distance back to its base (OFS_DELTA's encoding)
    ofs = [offset & 0x7F]
    while offset := offset >> 7:
        offset -= 1
        ofs.insert(0, 0x80 | (offset & 0x7F))
    second = entry_header(6, len(delta)) + bytes(ofs) + zlib.compress(delta)
    pack = b"PACK" + struct.pack(">II", 2, 2) + first + second
    return pack + hashlib.sha1(pack).digest()


def test_a_delta_bomb_is_refused_before_it_is_resolved(server, pushed, repo_name):
    _, sha = pushed
    pack = delta_bomb_pack(280 * LIMIT)
    assert len(pack) < 16 * 1024
    responses = []
    assert server.proc is not None
    growth = peak_rss_growth_mib(
        server.proc.pid,
        lambda: responses.append(
            post(server, f"{repo_name}.git/git-receive-pack", update(sha, "1" * 40) + pack)
        ),
    )
    (response,) = responses
    assert response.status_code < 500
    assert b"a delta's result" in response.content, response.content[:300]
    assert growth < 64, f"the server grew by {growth:.0f} MiB"
    assert tip(server, repo_name) == sha and incoming(server) == []


def negotiation(sha: str, haves: int) -> bytes:
    """A fetch request: one want (with the capabilities git sends) and many haves."""
    want = pkt_line(f"want {sha} side-band-64k thin-pack ofs-delta\n".encode()) + pkt_line(None)
    return want + b"".join(pkt_line(f"have {'1' * 40}\n".encode()) for _ in range(haves))


def test_upload_pack_takes_no_inflation_bomb_and_no_pack(server, pushed, repo_name):
    """What a fetch sends is negotiation only: a gzip body that inflates past the limit is
    refused as it inflates, and pack bytes sent to upload-pack are a malformed request; the
    server's memory does not grow with what they declare."""
    _, sha = pushed
    body = negotiation(sha, haves=1_200_000)
    gz = gzip.compress(body, compresslevel=9)
    assert len(gz) < LIMIT and len(body) > 50 * LIMIT

    def fetch(body: bytes, **headers: str) -> httpx.Response:
        return post(server, f"{repo_name}.git/git-upload-pack", body, scope="read", **headers)

    answers: list[httpx.Response] = []
    assert server.proc is not None
    growth = peak_rss_growth_mib(
        server.proc.pid,
        lambda: answers.extend(
            [
                fetch(gz, **{"Content-Encoding": "gzip"}),
                fetch(bomb_pack(280 * LIMIT)[0]),
                fetch(delta_bomb_pack(280 * LIMIT)),
            ]
        ),
    )
    inflated, pack, delta = answers
    assert inflated.status_code < 500 and b"larger than the store's limit" in inflated.content
    for answer in (pack, delta):
        assert answer.status_code < 500 and b"malformed git request" in answer.content, (
            answer.content[:300]
        )
    assert growth < 64, f"the server grew by {growth:.0f} MiB"
    assert "Traceback" not in server.server_log()


def chunked(body: bytes, piece: int = 64 * 1024) -> Iterator[bytes]:
    """httpx sends an iterator as `Transfer-Encoding: chunked`, with no Content-Length."""
    for start in range(0, len(body), piece):
        yield body[start : start + piece]


def test_chunked_bodies_are_limited_like_any_other(server, pushed, repo_name, tmp_path):
    """git sends a push larger than http.postBuffer chunked, with no length up front: the
    limits count what arrives (raw and inflated), and an ordinary chunked push still works."""
    work, sha = pushed
    work.write("noise.bin", os.urandom(2 * LIMIT))
    big = work.commit("noise")
    pack = pack_objects(work, f"{big}\n^{sha}\n", "--revs")
    over = post(server, f"{repo_name}.git/git-receive-pack", chunked(update(sha, big) + pack))
    assert over.status_code < 500
    assert b"larger than the store's limit" in over.content, over.content[:300]
    assert tip(server, repo_name) == sha and incoming(server) == []
    gz = gzip.compress(negotiation(sha, haves=600_000))
    fetch = post(server, f"{repo_name}.git/git-upload-pack", chunked(gz), scope="read",
                 **{"Content-Encoding": "gzip"})  # fmt: skip
    assert fetch.status_code < 500 and b"larger than the store's limit" in fetch.content
    work.run("reset", "-q", "--hard", sha)
    work.write("small.bin", os.urandom(200 * 1024))
    new = work.commit("small")
    url = server.git_url(repo_name, server.tokens["push"])
    done = work.run("-c", "http.postBuffer=4096", "push", "-f", url, "main", check=False)
    assert done.returncode == 0, done.stderr
    assert tip(server, repo_name) == new


GITMODULES = """[submodule "evil"]
	path = ../../outside
	url = --upload-pack=touch /tmp/pinflow-gitmodules-pwned
[submodule "vendor"]
	path = vendor/lib
	url = https://example.invalid/lib.git
"""


def test_gitmodules_and_gitlinks_are_inert(server, repo_name, tmp_path):
    """A commit with a .gitmodules (hostile paths and a url that is an option) and a gitlink
    (a submodule's commit, never pushed): it lands and its DAG parses; the archive a worker
    unpacks holds only the repository's own files, nothing outside its folder; the gitlink
    is a 404 as a file; a clone from the store works and runs nothing."""
    server.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    work.write(".gitmodules", GITMODULES)
    work.write("dags/d.py", f"from pinflow import DAG\nwith DAG('mods_{repo_name}'):\n    pass\n")
    work.run("add", "-A")
    work.run("update-index", "--add", "--cacheinfo", f"160000,{'a' * 40},vendor/lib")
    work.run("commit", "-q", "-m", "submodules")
    sha = work.head()
    landed = work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
    assert f"mods_{repo_name} parsed at {sha[:7]}" in landed.stderr, landed.stderr
    with server.api("read") as api:
        archive = api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz")
        assert archive.status_code == 200, archive.text
        gitlink = api.get(f"/repos/{repo_name}/files/{sha}/vendor/lib")
        assert gitlink.status_code == 404, gitlink.text
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        names = tar.getnames()
    assert ".gitmodules" in names and "dags/d.py" in names
    assert not [n for n in names if n.startswith(("/", "..")) or "/../" in n or n == "vendor/lib"]
    clone = Git(tmp_path / "c")
    cloned = clone.run("clone", "-q", server.git_url(repo_name, server.tokens["read"]), ".")
    assert cloned.returncode == 0 and (clone.path / "dags/d.py").exists()
    assert not Path("/tmp/pinflow-gitmodules-pwned").exists()
    assert "Traceback" not in server.server_log()

"""Where the store's git repositories live, and reading commits out of them.

Repositories are bare git repos in one folder today; everything else reaches them through
`RepoStorage`, so they could live elsewhere later. A fresh dulwich `Repo` is opened per use and
closed after it: sharing one across threads breaks on pack-cache eviction (PITFALLS.md).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dulwich.errors import NotGitRepository, NotTreeError
from dulwich.file import FileLocked
from dulwich.objects import Blob, Commit, SubmoduleEncountered, Tag, Tree
from dulwich.objectspec import AmbiguousShortId, parse_commit
from dulwich.refs import DiskRefsContainer
from dulwich.repo import Repo

from dagstore.errors import BadRequest, NotFound

REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
FULL_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SHORT_SHA_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")
REF_RE = re.compile(r"^[A-Za-z0-9_./-]{1,255}$")
KEEP_PREFIX = b"refs/pinflow/keep/"


def validate_repo_name(name: str) -> str:
    if not REPO_NAME_RE.match(name) or name.endswith((".git", ".lock", ".")) or ".." in name:
        raise BadRequest(
            f"invalid repository name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 100 characters, not ending in .git)"
        )
    return name


def validate_full_sha(sha: str) -> str:
    if not FULL_SHA_RE.match(sha):
        raise BadRequest(f"invalid sha {sha!r}: a full 40-character lowercase hex sha is required")
    return sha


def validate_branch_name(ref: str) -> str:
    if (
        not REF_RE.match(ref)
        or ".." in ref
        or ref.startswith(("/", "-", "refs/"))
        or ref.endswith(("/", ".lock", "."))
        or "//" in ref
    ):
        raise BadRequest(f"invalid branch name {ref!r}")
    return ref


class CheckedRefs(DiskRefsContainer):
    """Refs whose failed compare-and-swap is an error, not a silent success.

    dulwich's receive-pack ignores the boolean that `set_if_equals` returns, so a push that
    lost a race to another push would be reported as accepted; and `FileLocked` is not an
    `OSError`, so a locked ref escapes as a server error. Raising `OSError` makes the client
    see `[remote rejected] (failed to write)`.
    """

    def set_if_equals(self, name, old_ref, new_ref, *args, **kwargs):  # type: ignore[override]
        try:
            done = super().set_if_equals(name, old_ref, new_ref, *args, **kwargs)
        except FileLocked as exc:
            raise OSError(f"{name!r} is being updated by another push") from exc
        if not done:
            raise OSError(f"{name!r} moved while this push was applied")
        return True

    def remove_if_equals(self, name, old_ref, *args, **kwargs):  # type: ignore[override]
        try:
            done = super().remove_if_equals(name, old_ref, *args, **kwargs)
        except FileLocked as exc:
            raise OSError(f"{name!r} is being updated by another push") from exc
        if not done:
            raise OSError(f"{name!r} moved while this push was applied")
        return True


class RepoStorage:
    """A folder of bare repositories, one per store repo name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / f"{validate_repo_name(name)}.git"

    def exists(self, name: str) -> bool:
        return (self.path(name) / "HEAD").is_file()

    def create(self, name: str, track: str) -> None:
        """Create a bare repo whose HEAD names the tracked branch, so clones check it out."""
        final = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        if final.exists():
            return
        staging = self.root / f".{name}.creating"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        repo = Repo.init_bare(str(staging))
        try:
            repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/" + track.encode())
        finally:
            repo.close()
        try:
            staging.rename(final)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # created meanwhile by another server

    @contextmanager
    def open(self, name: str) -> Iterator[Repo]:
        repo = self.open_unmanaged(name)
        try:
            yield repo
        finally:
            repo.close()

    def open_unmanaged(self, name: str) -> Repo:
        """Open a repo the caller must close; its refs refuse lost compare-and-swaps."""
        try:
            repo = Repo(str(self.path(name)))
        except NotGitRepository:
            raise NotFound(f"repository {name!r} does not exist") from None
        if type(repo.refs) is DiskRefsContainer:
            repo.refs.__class__ = CheckedRefs
        return repo


def resolve_commit(repo: Repo, spec: str) -> str:
    """A branch, tag, full or unique short sha → the full sha of the commit it names."""
    if not spec or len(spec) > 255 or not REF_RE.match(spec) or ".." in spec:
        raise BadRequest(f"invalid ref {spec!r}")
    candidates = [spec.encode()]
    if not spec.startswith("refs/"):
        candidates = [f"refs/heads/{spec}".encode(), f"refs/tags/{spec}".encode()]
    for ref in candidates:
        try:
            sha = repo.refs[ref]
        except KeyError:
            continue
        return _peel_to_commit(repo, sha, spec)
    if SHORT_SHA_RE.match(spec):
        try:
            return parse_commit(repo, spec.lower()).id.decode()
        except AmbiguousShortId:
            raise BadRequest(f"short sha {spec!r} is ambiguous; give more characters") from None
        except (KeyError, ValueError):
            pass
    raise NotFound(f"no branch, tag or commit named {spec!r}")


def _peel_to_commit(repo: Repo, sha: bytes, spec: str) -> str:
    obj = repo[sha]
    while isinstance(obj, Tag):
        obj = repo[obj.object[1]]
    if not isinstance(obj, Commit):
        raise NotFound(f"{spec!r} does not name a commit")
    return obj.id.decode()


def get_commit(repo: Repo, sha: str) -> Commit:
    validate_full_sha(sha)
    try:
        obj = repo[sha.encode()]
    except KeyError:
        raise NotFound(f"commit {sha} is not in this repository") from None
    if not isinstance(obj, Commit):
        raise NotFound(f"{sha} is not a commit")
    return obj


def validate_file_path(path: str) -> bytes:
    """Refuse anything but a plain relative path inside the commit."""
    if not path or len(path) > 4096 or "\x00" in path or "\\" in path or path.startswith("/"):
        raise BadRequest(f"invalid file path {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequest(f"invalid file path {path!r}: no empty, '.' or '..' segments")
    return path.encode("utf-8")


def read_file(repo: Repo, sha: str, path: str) -> bytes:
    commit = get_commit(repo, sha)
    tree = repo[commit.tree]
    assert isinstance(tree, Tree)
    try:
        _mode, obj_sha = tree.lookup_path(repo.object_store.__getitem__, validate_file_path(path))
    except (KeyError, NotADirectoryError, NotTreeError, SubmoduleEncountered, ValueError):
        raise NotFound(f"no file {path!r} at {sha[:12]}") from None
    obj = repo[obj_sha]
    if not isinstance(obj, Blob):
        raise NotFound(f"{path!r} is a directory at {sha[:12]}")
    return obj.as_raw_string()


def ref_sha(repo: Repo, ref: bytes) -> bytes | None:
    """The sha a ref points at, or None when the ref does not exist."""
    try:
        return repo.refs[ref]
    except KeyError:
        return None

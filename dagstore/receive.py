"""What the store does when a push arrives: guard ref updates, keep old versions, record new ones.

dulwich calls the `update` hook per ref after the pack's objects are stored and before the ref
moves, and `post-receive` after the refs moved; its return text reaches the pusher as
`remote:` lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dulwich.errors import HookError
from dulwich.graph import can_fast_forward
from dulwich.hooks import Hook
from dulwich.repo import Repo
from sqlalchemy.orm import Session

from dagstore.db import Database
from dagstore.gitrepo import KEEP_PREFIX
from dagstore.models import Repo as RepoRow
from dagstore.repos import get_repo
from dagstore.version import ZERO_SHA, record_ref_update

RefUpdate = tuple[bytes, bytes, bytes]  # (old sha, new sha, ref name), as dulwich passes them
# Extra work after versions are recorded (parsing DAGs, for one); returns lines for the pusher.
AfterReceive = Callable[[Session, Repo, RepoRow, Sequence[RefUpdate], list[str]], list[str]]


def keep_reachable(repo: Repo, old: bytes, new: bytes) -> None:
    """Pin `old` under refs/pinflow/keep/ when an update would make it unreachable.

    Written before the ref moves: a crash in between leaves an extra keep ref, never a lost
    version. Fast-forwards need nothing: the old tip stays an ancestor of the new one.
    """
    if old == ZERO_SHA or old not in repo.object_store:
        return
    if new != ZERO_SHA and can_fast_forward(repo, old, new):
        return
    keep = KEEP_PREFIX + old
    try:
        repo.refs.set_if_equals(keep, None, old)
    except OSError:
        if repo.refs.get(keep) != old:  # another push writing the same keep ref is fine
            raise


class GuardUpdate(Hook):
    """The `update` hook: refuse the store's own refs, keep what an update orphans."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def execute(self, ref: bytes, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        if ref.startswith(b"refs/pinflow/"):
            raise HookError("refs/pinflow/ is reserved for the store")
        try:
            keep_reachable(self.repo, old, new)
        except OSError as exc:
            raise HookError(f"could not keep {old.decode()[:12]} reachable: {exc}") from exc
        return b"", b""


class RecordVersions(Hook):
    """The `post-receive` hook: one version row per new commit, then any follow-up work."""

    def __init__(
        self, db: Database, repo: Repo, repo_name: str, after: AfterReceive | None = None
    ) -> None:
        self.db = db
        self.repo = repo
        self.repo_name = repo_name
        self.after = after

    def execute(self, updates: Sequence[RefUpdate]) -> bytes:
        lines: list[str] = []
        try:
            with self.db.write() as session:
                row = get_repo(session, self.repo_name)
                added: list[str] = []
                for old, new, ref in updates:
                    added += record_ref_update(session, self.repo, row, ref.decode(), old, new)
                if added:
                    lines.append(
                        f"pinflow: recorded {len(added)} new version(s), newest {added[-1][:12]}"
                    )
                if self.after is not None:
                    lines += self.after(session, self.repo, row, updates, added)
        except Exception as exc:  # the refs moved already: say so, reconcile() catches up later
            raise HookError(
                f"pinflow: the push landed but recording its versions failed ({exc}); "
                "they are recorded on the next push or server start"
            ) from exc
        return "".join(line + "\n" for line in lines).encode()


def install_hooks(
    repo: Repo, db: Database, repo_name: str, after: AfterReceive | None = None
) -> None:
    repo.hooks.clear()  # never run shell hooks found on disk
    repo.hooks["update"] = GuardUpdate(repo)
    repo.hooks["post-receive"] = RecordVersions(db, repo, repo_name, after)

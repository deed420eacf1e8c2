"""What the store does when a push arrives.

dulwich calls the `update` hook per ref after the pack's objects are stored (in quarantine:
only this request sees them) and before the ref moves: there the store parses the new commit,
(for a strict repo) refuses it cleanly, and keeps what the update would orphan.
`post-receive` runs after the refs moved: it records the new versions and their parse
results, makes the tracked ref's tip current, and returns what the pusher reads as `remote:`
lines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

from dulwich.errors import HookError
from dulwich.graph import can_fast_forward
from dulwich.hooks import Hook
from dulwich.repo import Repo

from dagstore.core.metrics import PUSHES
from dagstore.core.terminal import printable
from dagstore.git.repack import consolidate
from dagstore.git.repo import KEEP_PREFIX, ref_sha
from dagstore.git.repos import get_repo
from dagstore.git.versions import ZERO_SHA, record_ref_update
from dagstore.parsing.current import lock_repo, publish
from dagstore.parsing.parser import ParseResult, parse_commit
from dagstore.parsing.sandbox import SandboxUnavailable
from dagstore.store import StoreContext

log = logging.getLogger("pinflow.receive")
PUSHABLE = (b"refs/heads/", b"refs/tags/")
RefUpdate = tuple[bytes, bytes, bytes]  # (old sha, new sha, ref name), as dulwich passes them


def keep_reachable(repo: Repo, ref: bytes, old: bytes, new: bytes) -> None:
    """Pin `old` under refs/pinflow/keep/ when an update of `ref` would make it unreachable.

    Written before the ref moves: a crash in between leaves an extra keep ref, never a lost
    version. Fast-forwards need nothing: the old tip stays an ancestor of the new one. Only
    when `ref` is at `old` now: otherwise the update's compare-and-swap fails anyway, and the
    client may have named as `old` a commit that only its own pack holds, which goes when
    the refused push is discarded.
    """
    if old == ZERO_SHA or ref_sha(repo, ref) != old or old not in repo.object_store:
        return
    if new != ZERO_SHA and can_fast_forward(repo, old, new):
        return
    keep = KEEP_PREFIX + old
    try:
        repo.refs.set_if_equals(keep, None, old)
    except OSError:
        if ref_sha(repo, keep) != old:  # another push writing the same keep ref is fine
            raise


class Push:
    """One receive-pack request: the repo, its settings, and the commits parsed so far."""

    def __init__(self, store: StoreContext, repo: Repo, repo_name: str) -> None:
        self.store = store
        self.repo = repo
        self.repo_name = repo_name
        self.parsed: dict[str, ParseResult] = {}
        self.unparsed: dict[str, str] = {}  # sha → why it was not parsed (no sandbox)

    @cached_property
    def _settings(self) -> tuple[bytes, bool]:
        """(tracked ref, strict), read only when a push needs them, not for every fetch."""
        with self.store.db.read() as session:
            row = get_repo(session, self.repo_name)
            return f"refs/heads/{row.track}".encode(), row.strict

    @property
    def track(self) -> bytes:
        return self._settings[0]

    @property
    def strict(self) -> bool:
        return self._settings[1]

    def parse(self, sha: str) -> ParseResult | None:
        if sha not in self.parsed:
            try:
                self.parsed[sha] = parse_commit(
                    self.repo, self.repo_name, sha, self.store.archives, self.store.parse_limits
                )
            except SandboxUnavailable as exc:
                if self.strict:
                    raise
                self.unparsed[sha] = str(exc)
                return None
            except Exception:
                if self.strict:
                    raise
                log.exception("parsing %s@%s failed; it stays pending", self.repo_name, sha)
                return None
        return self.parsed[sha]


class GuardUpdate(Hook):
    """The `update` hook: only branches and tags, never to a missing object, parsed (and, for
    a strict repo, refused when broken), and what the update orphans kept."""

    def __init__(self, push: Push) -> None:
        self.push = push

    def execute(self, ref: bytes, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        try:
            return self._check(ref, old, new)
        except HookError as exc:
            PUSHES.labels("refused").inc()
            # The pusher's terminal shows it: file names and errors come from pushed code.
            raise HookError(printable(str(exc))) from exc

    def _check(self, ref: bytes, old: bytes, new: bytes) -> tuple[bytes, bytes]:
        if ref.startswith(b"refs/pinflow/"):
            raise HookError("refs/pinflow/ is reserved for the store")
        if not ref.startswith(PUSHABLE):
            raise HookError("pinflow: refused: only branches (refs/heads/) and tags (refs/tags/)")
        if new != ZERO_SHA:
            # dulwich would point the ref at whatever the client names, even a missing object.
            store = self.push.repo.object_store
            if new not in store:
                raise HookError(f"pinflow: refused: {new.decode()} is not in the pushed pack")
            if ref.startswith(b"refs/heads/") and store[new].type_name != b"commit":
                raise HookError(f"pinflow: refused: {new.decode()} is not a commit")
        if new != ZERO_SHA and ref.startswith(b"refs/heads/"):
            try:
                result = self.push.parse(new.decode())
            except Exception as exc:
                raise HookError(f"pinflow: refused: could not parse the DAG files ({exc})") from exc
            if self.push.strict and result is not None and result.errors:
                broken = "; ".join(f"{e.file}: {e.summary}" for e in result.errors)
                raise HookError(f"pinflow: refused (strict repository): {broken}")
        # Last, once the update is accepted: keep what it orphans. (A keep ref names a commit
        # that is live already; the push's own objects become live only with the ref itself.)
        try:
            keep_reachable(self.push.repo, ref, old, new)
        except OSError as exc:
            raise HookError(f"could not keep {old.decode()[:12]} reachable: {exc}") from exc
        return b"", b""


class RecordVersions(Hook):
    """The `post-receive` hook: version rows, parse results, the tracked tip made current."""

    def __init__(self, push: Push) -> None:
        self.push = push

    def execute(self, updates: Sequence[RefUpdate]) -> bytes:
        push = self.push
        lines: list[str] = []
        try:
            # Versions first, in a transaction of their own: whatever happens to the parse
            # results below, every commit the push brought is on record.
            with push.store.db.write() as session:
                row = lock_repo(session, get_repo(session, push.repo_name).id)
                added: list[str] = []
                for old, new, ref in updates:
                    added += record_ref_update(session, push.repo, row, ref.decode(), old, new)
            PUSHES.labels("landed").inc()
            if added:
                lines.append(f"pinflow: recorded {len(added)} new version(s)")
            with push.store.db.write() as session:
                for _old, new, _ref in updates:
                    result = push.parsed.get(new.decode())
                    if result is not None:
                        publish(session, row, push.repo, result)
                        lines.append(result.feedback())
            for sha, why in push.unparsed.items():
                lines.append(f"pinflow: warning: {sha[:7]} landed but was not parsed: {why}")
        except Exception as exc:  # the refs moved already: say so, catch_up() finishes later
            PUSHES.labels("unrecorded").inc()
            log.exception("post-receive of %s failed", push.repo_name)
            lines.append(
                f"pinflow: warning: the push landed but recording it failed ({exc}); "
                "it is recorded on the next push or server start"
            )
        try:
            consolidate(push.repo)
        except Exception:  # the push landed: consolidation is tried again at the next one
            log.exception("consolidating the packs of %s failed", push.repo_name)
        return "".join(printable(line) + "\n" for line in lines).encode()


def install_hooks(repo: Repo, store: StoreContext, repo_name: str) -> None:
    push = Push(store, repo, repo_name)
    repo.hooks.clear()  # never run shell hooks found on disk
    repo.hooks["update"] = GuardUpdate(push)
    repo.hooks["post-receive"] = RecordVersions(push)

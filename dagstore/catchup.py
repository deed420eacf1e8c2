"""Catching up after a crash: what a push changed in git but not (yet) in the database.

A server can die between a ref update and the database write that records it, or while a
commit is being parsed, or in the middle of a push. At start, every server records the
commits the refs reach but no version row has, parses each tracked tip still pending, and
drops the quarantined packs of pushes that died long ago, so nothing waits for the next push.
"""

from __future__ import annotations

import logging

from dagstore.git.packs import discard_stale_quarantine
from dagstore.git.repos import list_repos
from dagstore.git.versions import reconcile
from dagstore.parsing.current import pending_tip, publish
from dagstore.parsing.parser import parse_commit
from dagstore.store import StoreContext

log = logging.getLogger("pinflow.catchup")


def catch_up(store: StoreContext) -> None:
    with store.db.read() as session:
        repos = list_repos(session)
    discard_stale_quarantine(store.db)
    for row in repos:
        with store.storage.open(row.name) as git:
            if git.refs.read_loose_ref(b"HEAD") is None:  # created before refs were rows
                git.refs.set_symbolic_ref(b"HEAD", f"refs/heads/{row.track}".encode())
            with store.db.write() as session:
                added = reconcile(session, git, row)
                sha = pending_tip(session, row, git)
            if added:
                log.warning("recorded %d version(s) of %s missed earlier", added, row.name)
            if sha is None:
                continue
            # Parsed outside any transaction: it may take seconds, and SQLite has one writer.
            result = parse_commit(git, row.name, sha, store.archives, store.parse_limits)
            with store.db.write() as session:
                publish(session, row, git, result)
            log.warning("parsed %s@%s, missed earlier: %s", row.name, sha[:12], result.feedback())

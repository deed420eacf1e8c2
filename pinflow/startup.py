"""What every server does before it answers: schema at head, versions caught up with refs."""

from __future__ import annotations

import logging

from dagstore.context import StoreContext
from dagstore.repos import list_repos
from dagstore.settings import Settings
from dagstore.version import reconcile
from pinflow.migrate import upgrade

log = logging.getLogger("pinflow.startup")


def prepare(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.repos_dir.mkdir(parents=True, exist_ok=True)
    store = StoreContext.from_settings(settings)
    try:
        upgrade(store.db)
        # A crash between a ref update and its database write leaves commits unrecorded.
        with store.db.write() as session:
            for row in list_repos(session):
                if not store.storage.exists(row.name):
                    store.storage.create(row.name, row.track)
                    continue
                with store.storage.open(row.name) as repo:
                    added = reconcile(session, repo, row)
                if added:
                    log.warning("recorded %d version(s) of %s missed earlier", added, row.name)
    finally:
        store.db.dispose()

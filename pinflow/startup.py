"""What every server does before it answers: schema at head, repositories left on disk by an
older version moved into the database, the store caught up with git."""

from __future__ import annotations

from dagstore.catchup import catch_up
from dagstore.context import StoreContext
from dagstore.gitimport import import_disk_repositories
from dagstore.settings import Settings
from pinflow.migrate import upgrade


def prepare(settings: Settings) -> None:
    settings.make_home()
    store = StoreContext.from_settings(settings)
    try:
        upgrade(store.db)
        import_disk_repositories(store.storage, settings.repos_dir)
        catch_up(store)
    finally:
        store.db.dispose()

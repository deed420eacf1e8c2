"""What every server does before it answers: schema at head, the store caught up with git."""

from __future__ import annotations

from dagstore.catchup import catch_up
from dagstore.context import StoreContext
from dagstore.settings import Settings
from pinflow.migrate import upgrade


def prepare(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.repos_dir.mkdir(parents=True, exist_ok=True)
    store = StoreContext.from_settings(settings)
    try:
        upgrade(store.db)
        catch_up(store)
    finally:
        store.db.dispose()

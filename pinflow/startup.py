"""What every server does before it answers: schema at head, repositories left on disk by an
older version moved into the database, the store caught up with git. A database that is down
or failing over at that moment is waited for (said once), not a reason to exit (issue 26)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from dagstore.catchup import catch_up
from dagstore.core.db import database_down
from dagstore.core.outage import Outage
from dagstore.core.settings import Settings
from dagstore.git.diskimport import import_disk_repositories
from dagstore.store import StoreContext
from pinflow.migrate import upgrade

log = logging.getLogger("pinflow.startup")
T = TypeVar("T")


def prepare(settings: Settings) -> None:
    settings.make_home()
    store = StoreContext.from_settings(settings)
    try:
        until_database("bringing the schema up to date", lambda: upgrade(store.db))
        import_disk_repositories(store.storage, settings.repos_dir)
        catch_up(store)
    finally:
        store.db.dispose()


def until_database(what: str, step: Callable[[], T]) -> T:
    """`step()`, tried again (capped backoff) for as long as the database is unreachable."""
    outage = Outage("the database", log, cap=5.0)
    while True:
        try:
            result = step()
        except Exception as exc:
            if not database_down(exc):
                raise
            time.sleep(outage.failed(what, exc))
            continue
        outage.ended()
        return result

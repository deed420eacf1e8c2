"""What a store process holds for its whole life: settings, database, repos, archive cache."""

from __future__ import annotations

from dataclasses import dataclass

from dagstore.archive import ArchiveCache
from dagstore.db import Database
from dagstore.gitrepo import RepoStorage
from dagstore.parse import ParseLimits
from dagstore.settings import Settings
from dagstore.tokencache import TokenCache


@dataclass
class StoreContext:
    settings: Settings
    db: Database
    storage: RepoStorage
    archives: ArchiveCache
    tokens: TokenCache

    @property
    def parse_limits(self) -> ParseLimits:
        return ParseLimits(self.settings.parse_timeout, self.settings.parse_memory_mb)

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreContext:
        return cls(
            settings=settings,
            db=Database(settings.database_url),
            storage=RepoStorage(settings.repos_dir),
            archives=ArchiveCache(
                settings.archive_cache_dir, settings.archive_memory_mb * 1024 * 1024
            ),
            tokens=TokenCache(settings.token_cache_seconds),
        )

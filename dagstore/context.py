"""What a store process holds for its whole life: settings, database, repos, caches."""

from __future__ import annotations

from dataclasses import dataclass

from dagstore.archive import ArchiveCache
from dagstore.db import Database
from dagstore.diskcache import DiskCache
from dagstore.gitrepo import RepoStorage
from dagstore.packcheck import InflateLimits
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
        """Packs and archives share one bounded disk cache: both can be built again."""
        db = Database(settings.database_url)
        disk = DiskCache(settings.server_cache_dir, settings.server_cache_mb * 1024 * 1024)
        return cls(
            settings=settings,
            db=db,
            storage=RepoStorage(
                db,
                disk,
                InflateLimits(
                    settings.max_object_mb * 2**20, settings.max_push_inflated_mb * 2**20
                ),
            ),
            archives=ArchiveCache(disk, settings.archive_memory_mb * 1024 * 1024),
            tokens=TokenCache(settings.token_cache_seconds),
        )

"""What a store process holds for its whole life: settings, database, repos, caches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dagstore.access.grants import GrantVersion
from dagstore.access.tokencache import TokenCache
from dagstore.core.db import Database
from dagstore.core.settings import Settings
from dagstore.git.archive import ArchiveCache
from dagstore.git.diskcache import DiskCache
from dagstore.git.packcheck import InflateLimits
from dagstore.git.repo import RepoStorage
from dagstore.parsing.parser import ParseLimits
from dagstore.parsing.sandbox import SandboxProbe


@dataclass
class StoreContext:
    settings: Settings
    db: Database
    storage: RepoStorage
    archives: ArchiveCache
    tokens: TokenCache
    sandbox_probe: SandboxProbe
    # Whether a try credential may read a version: the scheduler answers (`pinflow.app`).
    grant_version: GrantVersion | None = None

    @property
    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            self.settings.parse_timeout,
            self.settings.parse_memory_mb,
            self.sandbox_probe.sandbox,
        )

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
            sandbox_probe=SandboxProbe(settings.parse_sandbox, _secret_paths(settings)),
        )


def _secret_paths(settings: Settings) -> tuple[str, ...]:
    """What a parse must never see even if a folder it is given holds it."""
    paths = [str(settings.home)]
    if settings.database_url.startswith("sqlite:///"):
        paths.append(str(Path(settings.database_url.removeprefix("sqlite:///")).parent))
    return tuple(paths)

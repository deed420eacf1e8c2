"""One settings object, read from the environment (DESIGN.md, "Configuration").

Every process (server, scheduler, worker, CLI) builds it the same way, so a variable means
the same thing everywhere; CLI flags override by passing explicit values to `Settings.load`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from dagstore.core.durations import parse_age
from dagstore.core.errors import BadRequest
from dagstore.core.logtail import DEFAULT_CAP, SETTING, check_cap

DEFAULT_API_URL = "http://127.0.0.1:8740"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"pinflow: {name} must be a number, got {raw!r}") from None


def _env_url(name: str) -> str | None:
    raw = (os.environ.get(name) or "").strip().rstrip("/")
    if raw and not raw.startswith(("http://", "https://")):
        raise SystemExit(f"pinflow: {name} must be an http:// or https:// URL, got {raw!r}")
    return raw or None


def _env_log_cap() -> int:
    raw = (os.environ.get(SETTING) or "").strip()
    if not raw:
        return DEFAULT_CAP
    if not raw.isdigit():
        raise SystemExit(f"pinflow: {SETTING} must be a number of bytes, got {raw!r}")
    try:
        return check_cap(int(raw))
    except ValueError as exc:
        raise SystemExit(f"pinflow: {exc}") from None


def _env_age(name: str) -> timedelta | None:
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    try:
        age = parse_age(raw, name)
    except BadRequest as exc:
        raise SystemExit(f"pinflow: {exc.detail}") from None
    if not age:
        raise SystemExit(f"pinflow: {name} must be more than 0 (unset it to keep all history)")
    return age


def normalise_database_url(url: str) -> str:
    """Let users write the URL they know (`postgresql://...`) and still get psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


HOME_FOLDER = ".pinflow"


def find_home(start: Path | None = None) -> Path:
    """The home when PINFLOW_HOME is not set, found as git finds its repository: the nearest
    `.pinflow` folder in the working folder or above it, so `pinflow token list` works from
    a DAG repo inside the folder `pinflow up` ran in; `./.pinflow` when there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / HOME_FOLDER).is_dir():
            return folder / HOME_FOLDER
    return here / HOME_FOLDER


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    redis_url: str | None
    api_url: str
    token: str | None
    lease_ttl: float
    heartbeat_timeout: float
    max_push_bytes: int
    parse_timeout: float
    parse_memory_mb: int
    token_cache_seconds: float = 5.0
    archive_memory_mb: int = 128
    server_cache_mb: int = 2048
    max_object_mb: int = 100
    max_push_inflated_mb: int = 1024
    parse_sandbox: str = "on"
    # Where users reach the server (behind a proxy); an https one makes the UI's cookie Secure.
    public_url: str | None = None
    # Proxies whose X-Forwarded-Proto/-For the server believes (uvicorn's forwarded_allow_ips).
    forwarded_allow_ips: str = "127.0.0.1"
    # A try's log keeps its head and tail within this many bytes (`dagstore.core.logtail`).
    task_log_max_bytes: int = DEFAULT_CAP
    # Schedulers delete finished runs older than this (`pinflow db clean`); None: never.
    clean_older_than: timedelta | None = None
    clean_every: float = 3600.0  # seconds between two of a scheduler's cleaning passes

    def make_home(self) -> None:
        """PINFLOW_HOME and the SQLite file are this user's alone (0700, 0600): they hold the
        tokens `pinflow up` made, the database, caches. Existing ones are left as they are
        (an operator may share them on purpose), except that a home this call creates is
        never readable by others."""
        if not self.home.exists():
            self.home.mkdir(parents=True, mode=0o700)
            os.chmod(self.home, 0o700)  # mkdir's mode is masked by the umask
        if self.database_url.startswith("sqlite:///"):
            path = Path(self.database_url.removeprefix("sqlite:///"))
            if not path.exists() and path.parent.is_dir():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    @property
    def repos_dir(self) -> Path:
        """Where repositories lived on disk before issue 13 (imported from there once)."""
        return self.home / "repos"

    @property
    def server_cache_dir(self) -> Path:
        """An API server's disk cache: packs read from the database, archives built."""
        return self.home / "cache" / "server"

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        home = Path(os.environ.get("PINFLOW_HOME") or find_home()).expanduser().resolve()
        if "home" in overrides and overrides["home"] is not None:
            home = Path(str(overrides["home"])).expanduser().resolve()
        db_url = os.environ.get("PINFLOW_DATABASE_URL") or f"sqlite:///{home / 'pinflow.db'}"
        settings = cls(
            home=home,
            database_url=normalise_database_url(db_url),
            redis_url=os.environ.get("PINFLOW_REDIS_URL") or None,
            api_url=(os.environ.get("PINFLOW_API_URL") or DEFAULT_API_URL).rstrip("/"),
            token=os.environ.get("PINFLOW_TOKEN") or None,
            lease_ttl=_env_float("PINFLOW_LEASE_TTL", 30.0),
            heartbeat_timeout=_env_float("PINFLOW_HEARTBEAT_TIMEOUT", 60.0),
            max_push_bytes=int(_env_float("PINFLOW_MAX_PUSH_BYTES", 100 * 1024 * 1024)),
            parse_timeout=_env_float("PINFLOW_PARSE_TIMEOUT", 30.0),
            parse_memory_mb=int(_env_float("PINFLOW_PARSE_MEMORY_MB", 1024)),
            token_cache_seconds=_env_float("PINFLOW_TOKEN_CACHE_SECONDS", 5.0),
            archive_memory_mb=int(_env_float("PINFLOW_ARCHIVE_MEMORY_MB", 128)),
            server_cache_mb=int(_env_float("PINFLOW_SERVER_CACHE_MB", 2048)),
            max_object_mb=int(_env_float("PINFLOW_MAX_OBJECT_MB", 100)),
            max_push_inflated_mb=int(_env_float("PINFLOW_MAX_PUSH_INFLATED_MB", 1024)),
            parse_sandbox=os.environ.get("PINFLOW_PARSE_SANDBOX") or "on",
            public_url=_env_url("PINFLOW_PUBLIC_URL"),
            forwarded_allow_ips=os.environ.get("PINFLOW_FORWARDED_ALLOW_IPS") or "127.0.0.1",
            task_log_max_bytes=_env_log_cap(),
            clean_older_than=_env_age("PINFLOW_CLEAN_OLDER_THAN"),
            clean_every=_env_float("PINFLOW_CLEAN_EVERY", 3600.0),
        )
        explicit = {k: v for k, v in overrides.items() if v is not None and k != "home"}
        if "database_url" in explicit:
            explicit["database_url"] = normalise_database_url(str(explicit["database_url"]))
        return replace(settings, **explicit) if explicit else settings

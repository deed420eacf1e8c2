"""The Redis connection every pinflow process makes: a plain URL, or Redis Sentinel.

`PINFLOW_REDIS_URL` is `redis://[:PASSWORD@]HOST:PORT/DB` (redis-py's own URL forms), or
`redis+sentinel://[:PASSWORD@]H1:P1,H2:P2,H3:P3/SERVICE[/DB]`: the Sentinels to ask, the
service (Sentinel's "master name") and the database. The password is Redis's (its
`requirepass`); the Sentinels themselves are asked without one.

With Sentinel, a connection asks a Sentinel for the primary's address each time it connects,
and a `READONLY` reply from a demoted primary drops the connection (redis-py's
`SentinelManagedConnection`). Before redis-py 6.4 the connection's own retries went on
dialling the old address (redis/redis-py#3560); 6.4 asks again per attempt, and pinflow's
backoff loops also drop every pooled connection on a fault (`forget_primary`), so the next
command asks Sentinel whatever the library's version does.

Bad URLs are found at start (`check_redis_url`): one clear line and a non-zero exit, never a
traceback, and a Sentinel that answers but knows no such service is said to be exactly that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.exceptions import RedisError, ResponseError
from redis.sentinel import Sentinel
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError

from dagstore.core.errors import BadRequest

log = logging.getLogger("pinflow.redis")
SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_TIMEOUT = 2.0  # seconds for one Sentinel to answer: the next one is asked after it

# What Redis (or RQ reading it) raises when Redis went away, lost keys, or turned replica.
REDIS_FAULTS: tuple[type[Exception], ...] = (
    RedisError,
    InvalidJobOperation,
    NoSuchJobError,
    DeserializationError,
)


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[:PASSWORD@]H1:P1,H2:P2/SERVICE[/DB]`; BadRequest says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise BadRequest(f"not a {SENTINEL_SCHEME}:// URL")
    hosts = parts.netloc.rpartition("@")[2]
    password = unquote(parts.password) if parts.password else None
    sentinels = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest(
                f"Sentinel address {item.strip() or '(empty)'!r} is not HOST:PORT "
                f"(expected {SENTINEL_SCHEME}://[:PASSWORD@]H1:P1,H2:P2,H3:P3/SERVICE[/DB])"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise BadRequest(
            f"{SENTINEL_SCHEME} URL must end in /SERVICE or /SERVICE/DB, got {parts.path or '/'!r}"
        )
    if len(path) == 2 and not path[1].isdigit():
        raise BadRequest(f"Redis database {path[1]!r} is not a number")
    return SentinelTarget(tuple(sentinels), unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                          password)  # fmt: skip


def connect(url: str, **options: Any) -> Redis:
    """A Redis client for `url` (plain or Sentinel); `options` as for `Redis` (timeouts...).
    No connection is made yet."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    return _sentinel(target).master_for(
        target.service, db=target.db, password=target.password, **options
    )


def _sentinel(target: SentinelTarget) -> Sentinel:
    return Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        },
    )


def forget_primary(client: Redis) -> None:
    """After a fault: drop every pooled connection, so the next command connects afresh (with
    Sentinel: asks a Sentinel where the primary is now). Never raises."""
    try:
        client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001 - a pool that cannot even disconnect is dropped anyway
        log.debug("could not drop Redis connections", exc_info=True)


def check_redis_url(url: str) -> None:
    """At start: a URL pinflow cannot use is BadRequest with one clear line. For Sentinel,
    Sentinels that answer but name no primary for the service are an error too; Sentinels
    that do not answer are not (Redis may come later: the process waits for it)."""
    scheme = urlsplit(url).scheme
    if scheme == SENTINEL_SCHEME:
        target = parse_sentinel_url(url)
        _check_service(target)
        return
    if scheme not in PLAIN_SCHEMES:
        raise BadRequest(
            f"PINFLOW_REDIS_URL must start with redis://, rediss://, unix:// or "
            f"{SENTINEL_SCHEME}://, got {scheme + '://' if scheme else repr(url)}"
        )
    try:
        Redis.from_url(url)
    except ValueError as exc:
        raise BadRequest(f"PINFLOW_REDIS_URL is malformed: {exc}") from None


def _check_service(target: SentinelTarget) -> None:
    answered = []
    for host, port in target.sentinels:
        client = Redis(
            host=host,
            port=port,
            socket_timeout=SENTINEL_TIMEOUT,
            socket_connect_timeout=SENTINEL_TIMEOUT,
        )
        try:
            address = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", target.service
            )
        except ResponseError as exc:
            raise BadRequest(f"{host}:{port} does not answer as a Redis Sentinel: {exc}") from None
        except RedisError:
            continue  # down or unreachable: maybe another one answers
        finally:
            client.close()
        if address:
            return
        answered.append(f"{host}:{port}")
    if answered:
        raise BadRequest(
            f"Redis Sentinel {', '.join(answered)} names no primary for service "
            f"{target.service!r} (check the SERVICE part of PINFLOW_REDIS_URL)"
        )
    log.warning("no Redis Sentinel of %s answers yet; waiting for them", target.sentinels)


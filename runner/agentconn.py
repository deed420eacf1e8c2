"""The RQ worker's Redis connections, opened by the token agent: no password in this process.

Work horses are forked from the RQ worker, so whatever it holds, task code can read: its
environment as it was at exec, its memory. A Redis URL there would give every task the
queue's password (drop or add jobs; with an unrestricted Redis user, `CONFIG SET dir` and
`SAVE` write files as the Redis server's user). So the agent (`runner.agent`), which holds
the URL, opens and authenticates each connection and passes the connected socket over; the
RQ worker talks on it as on any other. A reconnect asks the agent again.

A forked child (a work horse, a warm fork server) closes every connection it inherited before
any task code runs (`close_inherited`): it never talks to Redis, and with no socket and no
password it cannot.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from redis import Redis
from redis.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

from dagstore.core.errors import PinflowError
from dagstore.core.redisconn import connect
from runner.agent import REDIS_VIA_AGENT_ENV, AgentClient


class AgentConnection(Connection):
    """A redis-py connection whose socket comes, connected and authenticated, from the
    agent. No AUTH, no SELECT here: the agent did both on it."""

    def __init__(self, agent: AgentClient, **kwargs: Any) -> None:
        kwargs.update(password=None, username=None, db=0, host="token-agent", port=0)
        super().__init__(**kwargs)
        self.agent = agent

    def _connect(self) -> socket.socket:
        try:
            sock = self.agent.redis_socket()
        except PinflowError as exc:  # redis-py makes an OSError its ConnectionError
            raise OSError(exc.detail) from None
        sock.settimeout(self.socket_timeout)
        return sock

    def _host_error(self) -> str:
        return "Redis through the worker's token agent"

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """A `READONLY` reply means the socket reaches a demoted primary (a Sentinel failover):
        a lost connection, so the next one is asked of the agent, which asks Sentinel afresh
        (as redis-py's `SentinelManagedConnection` does for its own connections)."""
        try:
            return super().read_response(*args, **kwargs)
        except ReadOnlyError:
            self.disconnect()
            raise RedisConnectionError("the Redis primary is now a replica") from None


def worker_redis(redis_url: str, agent: AgentClient | None, **options: Any) -> Redis:
    """The RQ worker's client: connections from the agent when it hands them over
    (REDIS_VIA_AGENT_ENV), else from `redis_url` (a TLS Redis; tests that run a worker
    in-process)."""
    if agent is not None and os.environ.get(REDIS_VIA_AGENT_ENV) == "1":
        pool = ConnectionPool(connection_class=AgentConnection, agent=agent, **options)
        return Redis(connection_pool=pool)
    if not redis_url:
        raise PinflowError("PINFLOW_REDIS_URL is not set: the worker takes its tasks from Redis")
    return connect(redis_url, **options)


def close_inherited(client: Redis) -> None:
    """In a forked child: close every connection of `client`'s pool without a word to Redis.

    redis-py's own reset after a fork forgets the connections but leaves their sockets open
    (the parent still uses them), and `disconnect()` in a child only closes, never shuts
    down, the socket. Read the pool's lists directly: its lock may have been held by a
    thread of the parent that does not exist here.
    """
    pool = client.connection_pool
    for connection in [
        *getattr(pool, "_available_connections", []),
        *getattr(pool, "_in_use_connections", []),
    ]:
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            connection._sock = None  # noqa: SLF001 - closed below, by the fd we own here
            sock.close()

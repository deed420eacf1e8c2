"""CLI commands that run pinflow's own processes: the API server and schema upgrades."""

from __future__ import annotations

from typing import Annotated

import typer

from dagstore.core.errors import BadRequest
from dagstore.core.settings import Settings
from pinflow.cli.options import DatabaseUrl, Home

db_app = typer.Typer(help="The database schema.")


def check_urls(settings: Settings, database: bool = True, redis: bool = True) -> None:
    """At start, before anything connects: a database or Redis URL pinflow cannot use (a
    malformed multi-host or Sentinel URL, a Sentinel that names no primary for the service)
    is one clear line and a non-zero exit, never a traceback (issue 26)."""
    from dagstore.core.db import check_database_url
    from dagstore.core.redisconn import check_redis_url

    if database:
        try:
            check_database_url(settings.database_url)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    if redis and settings.redis_url:
        check_redis_url(settings.redis_url)


@db_app.command("upgrade")
def db_upgrade(home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Bring the database schema up to date (safe to run from many processes at once)."""
    from dagstore.git.diskimport import import_disk_repositories
    from dagstore.store import StoreContext
    from pinflow.migrate import upgrade

    settings = Settings.load(home=home, database_url=database_url)
    check_urls(settings, redis=False)
    settings.make_home()
    store = StoreContext.from_settings(settings)
    upgrade(store.db)
    print("database schema is up to date")
    for done in import_disk_repositories(store.storage, settings.repos_dir):
        print(
            f"repository {done.name}: moved into the database ({done.objects} objects checked, "
            f"{done.refs} refs); {settings.repos_dir / (done.name + '.git')} can be deleted"
        )


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8740,
    home: Home = None,
    database_url: DatabaseUrl = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes sharing the port (uvicorn workers); each keeps its own "
            "token cache and archive memory",
        ),
    ] = 1,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="Where users reach this server, e.g. https://pinflow.example.com "
            "[env: PINFLOW_PUBLIC_URL]; https makes the UI's session cookie Secure"
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated addresses or networks of proxies whose X-Forwarded-Proto and "
            "X-Forwarded-For are believed; * for any [env: PINFLOW_FORWARDED_ALLOW_IPS; "
            "default 127.0.0.1]"
        ),
    ] = None,
) -> None:
    """Run an API server (DAG store, git remote, runs API); run many behind a load balancer."""
    import os

    import uvicorn

    from pinflow.app import server_app
    from pinflow.startup import prepare

    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise BadRequest(f"--public-url must be an http:// or https:// URL, not {public_url!r}")
    settings = Settings.load(
        home=home,
        database_url=database_url,
        public_url=public_url.rstrip("/") if public_url else None,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    check_urls(settings)
    prepare(settings)  # once, before any process answers
    proxy = {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}
    if workers == 1:
        uvicorn.run(server_app(settings), host=host, port=port, log_level=log_level, **proxy)
        return
    # uvicorn's workers are fresh interpreters (spawned): they load their settings from the
    # environment, so what the flags said must be there.
    os.environ["PINFLOW_HOME"] = str(settings.home)
    os.environ["PINFLOW_DATABASE_URL"] = settings.database_url
    if settings.public_url:
        os.environ["PINFLOW_PUBLIC_URL"] = settings.public_url
    uvicorn.run(
        "pinflow.app:server_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
        **proxy,
    )


def scheduler(
    name: Annotated[str | None, typer.Option(help="Name in leases and logs")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="PINFLOW_SCHEDULER_METRICS_PORT",
            min=1,
            max=65535,
            help="Serve this scheduler's Prometheus metrics (tasks it declared lost) on PORT",
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port")] = "127.0.0.1",
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run one scheduler; run as many as you like, on any machines."""
    import logging

    from dagstore.store import StoreContext
    from pinflow.migrate import upgrade
    from pinflow.startup import until_database
    from scheduler.enqueue import Enqueuer
    from scheduler.loop import Scheduler, SchedulerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.load(home=home, database_url=database_url)
    check_urls(settings)
    store = StoreContext.from_settings(settings)
    until_database("bringing the schema up to date", lambda: upgrade(store.db))
    config = SchedulerConfig(
        lease_ttl=settings.lease_ttl,
        heartbeat_timeout=settings.heartbeat_timeout,
        clean_older_than=settings.clean_older_than,
        clean_every=settings.clean_every,
    )
    if name:
        config.name = name
    enqueuer = Enqueuer(settings.redis_url) if settings.redis_url else None
    if enqueuer is None:
        raise BadRequest("PINFLOW_REDIS_URL is not set: the scheduler needs Redis to queue tasks")
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
    Scheduler(store.db, enqueuer, config).run_forever()


def worker(
    queue: Annotated[
        list[str] | None, typer.Option(help="Queue to take tasks from (repeat)")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty")] = False,
    name: Annotated[str | None, typer.Option(help="Worker name in RQ and in task records")] = None,
    fork: Annotated[
        bool,
        typer.Option(
            help="Run each task in a fresh forked process (isolation). --no-fork runs tasks in "
            "the worker process: several times the throughput for short tasks, no isolation"
        ),
    ] = True,
) -> None:
    """Run one worker: takes tasks from Redis, fetches versions and reports over HTTP."""
    from runner.agent import WorkerOptions, WorkerSecrets, launch

    settings = Settings.load()
    if not settings.redis_url:
        raise BadRequest("PINFLOW_REDIS_URL is not set: the worker takes its tasks from Redis")
    if not settings.token:
        raise BadRequest("PINFLOW_TOKEN is not set: the worker needs a worker-scope token")
    check_urls(settings, database=False)  # a worker never opens the database
    # Becomes the token agent (same process, token and Redis URL out of its environment),
    # which starts the RQ worker with neither: task code never sees them (runner/agent.py,
    # SECURITY.md).
    launch(
        WorkerOptions(queue, burst, name, fork), WorkerSecrets(settings.token, settings.redis_url)
    )


def up(
    port: Annotated[
        int, typer.Option(envvar="PINFLOW_UP_PORT", help="API server port (`make up PORT=...`)")
    ] = 8740,
    host: Annotated[str, typer.Option(help="Address the API server listens on")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=0, max=64, help="How many workers")] = 2,
    demo: Annotated[bool, typer.Option(help="Create repo `demo`, push examples/, run etl")] = False,
    home: Home = None,
) -> None:
    """Everything on one machine: API server, scheduler, workers, private Redis, SQLite."""
    from pinflow.up import up as run_up

    raise typer.Exit(run_up(Settings.load(home=home), host, port, workers, demo))


def register(app: typer.Typer) -> None:
    from pinflow.cli.clean import db_clean

    db_app.command("clean")(db_clean)
    app.add_typer(db_app, name="db")
    app.command("server")(serve)
    app.command("scheduler")(scheduler)
    app.command("worker")(worker)
    app.command("up")(up)

"""CLI commands that run pinflow's own processes: the API server and schema upgrades."""

from __future__ import annotations

from typing import Annotated

import typer

from dagstore.context import StoreContext
from dagstore.settings import Settings
from pinflow.cli.options import DatabaseUrl, Home
from pinflow.migrate import upgrade

db_app = typer.Typer(help="The database schema.")


@db_app.command("upgrade")
def db_upgrade(home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Bring the database schema up to date (safe to run from many processes at once)."""
    settings = Settings.load(home=home, database_url=database_url)
    settings.home.mkdir(parents=True, exist_ok=True)
    store = StoreContext.from_settings(settings)
    upgrade(store.db)
    print("database schema is up to date")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8740,
    home: Home = None,
    database_url: DatabaseUrl = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run an API server (DAG store, git remote, runs API); run many behind a load balancer."""
    import uvicorn

    from pinflow.app import create_app
    from pinflow.startup import prepare

    settings = Settings.load(home=home, database_url=database_url)
    prepare(settings)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command("server")(serve)

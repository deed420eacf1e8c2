"""Options shared by several commands: each also an environment variable (DESIGN.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from dagstore.core.settings import Settings

ApiUrl = Annotated[
    str | None, typer.Option("--api-url", envvar="PINFLOW_API_URL", help="API server URL")
]
Token = Annotated[str | None, typer.Option("--token", envvar="PINFLOW_TOKEN", help="Bearer token")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="PINFLOW_DATABASE_URL", help="SQLAlchemy URL"),
]
Home = Annotated[str | None, typer.Option("--home", envvar="PINFLOW_HOME", help="Data folder")]


def client_settings(api_url: str | None, token: str | None) -> Settings:
    return Settings.load(api_url=api_url.rstrip("/") if api_url else None, token=token)

"""CLI commands of the DAG store: tokens, repositories, versions."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from dagstore.access.scopes import SCOPES
from dagstore.core.errors import NotFound
from dagstore.core.settings import Settings
from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, DatabaseUrl, Home, Token, client_settings
from pinflow.cli.render import Column, Output, short_time, show
from pinflow.gitauth import push_recipe

if TYPE_CHECKING:
    from dagstore.core.db import Database

token_app = typer.Typer(help="Create, list and revoke API tokens (reads and writes the database).")
repo_app = typer.Typer(help="Repositories of the DAG store.")


def existing_database(home: str | None, database_url: str | None) -> Database:
    """The existing database, schema at head (SQLAlchemy and Alembic load only for these
    commands). Only `db upgrade`, `server`, `scheduler` and `up` create one: a token made in
    a database no server reads is a token every server refuses."""
    from dagstore.core.db import Database
    from pinflow.migrate import missing_database, upgrade

    settings = Settings.load(home=home, database_url=database_url)
    db = Database(settings.database_url)
    where = missing_database(db)
    if where is not None:
        db.dispose()
        raise NotFound(
            f"no pinflow database at {where}: no .pinflow folder here or above, so set "
            "PINFLOW_HOME (`pinflow up` prints its export) or PINFLOW_DATABASE_URL, or run "
            "`pinflow db upgrade` to create one"
        )
    upgrade(db)
    return db


@token_app.command("create")
def token_create(
    scope: Annotated[str, typer.Option(help=f"One of: {', '.join(SCOPES)}")],
    name: Annotated[str, typer.Option(help="A label to recognise the token by")] = "",
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a new token on stdout (only its hash is stored)."""
    from dagstore.access.tokens import check_scope_name, issue_token

    check_scope_name(scope)  # before the database: a typo needs none to be told
    db = existing_database(home, database_url)
    with db.write() as session:
        token_id, secret = issue_token(session, scope, name)
    print(secret)
    print(f"created token {token_id} ({scope}); `pinflow token list` shows it", file=sys.stderr)


@token_app.command("list")
def token_list(output: Output = None, home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Every token: id, name, scope, created, last used, revoked (never the secret: only its
    hash is stored). Last use is recorded to within a few minutes."""
    from dagstore.access.tokens import list_tokens
    from dagstore.core.db import iso

    db = existing_database(home, database_url)
    with db.read() as session:
        tokens = [{**t, **{k: iso(t[k]) for k in TIMES}} for t in list_tokens(session)]
    show(tokens, TOKEN_COLUMNS, output)


TIMES = ("created_at", "last_used_at", "revoked_at")
TOKEN_COLUMNS = [
    Column("id", lambda t: str(t["id"]), no_wrap=True),
    Column("name", lambda t: t["name"]),
    Column("scope", lambda t: t["scope"]),
    *(Column(label, lambda t, k=k: short_time(t[k]))
      for label, k in zip(("created", "last used", "revoked"), TIMES, strict=True)),
]  # fmt: skip


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id")],
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token at once: every server stops accepting it."""
    from dagstore.access.tokens import revoke_token

    db = existing_database(home, database_url)
    with db.write() as session:
        revoke_token(session, token_id)
    print(f"revoked token {token_id}")


@repo_app.command("create")
def repo_create(
    name: str,
    track: Annotated[str, typer.Option(help="The branch whose commits are scheduled")] = "main",
    strict: Annotated[bool, typer.Option(help="Refuse pushes whose DAG files fail")] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Create a repository that accepts pushes (needs an admin token)."""
    client = ApiClient(client_settings(api_url, token))
    repo = client.post("/repos", json={"name": name, "track": track, "strict": strict})
    print(f"created repository {repo['name']} (tracks {repo['track']})")
    print(push_recipe(repo["git_url"], repo["track"]), end="")


REPO_COLUMNS = [
    Column("name", lambda r: r["name"]),
    Column("track", lambda r: r["track"]),
    Column("strict", lambda r: str(r["strict"])),
    Column("git remote", lambda r: r["git_url"], no_wrap=True),
]
VERSION_COLUMNS = [
    Column("sha", lambda v: v["sha"][:12], no_wrap=True),
    Column("ref", lambda v: v["ref"].removeprefix("refs/heads/")),
    Column("pushed at", lambda v: short_time(v["pushed_at"])),
    Column("author", lambda v: v["author"].split(" <")[0]),
    Column("message", lambda v: (v["message"].strip().splitlines() or [""])[0]),
    Column("dags", lambda v: ", ".join(v["dags"])),
    Column("errors", lambda v: str(len(v["errors"])) if v["errors"] else ""),
]


@repo_app.command("list")
def repo_list(output: Output = None, api_url: ApiUrl = None, token: Token = None) -> None:
    """List repositories."""
    client = ApiClient(client_settings(api_url, token))
    show(client.get("/repos")["items"], REPO_COLUMNS, output)


def versions(
    repo: str,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    output: Output = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """The versions (commits) of a repository, newest first."""
    client = ApiClient(client_settings(api_url, token))
    items = client.get(f"/repos/{repo}/versions", params={"limit": limit})["items"]
    show(items, VERSION_COLUMNS, output)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(repo_app, name="repo")
    app.command("versions")(versions)

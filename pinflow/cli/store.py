"""CLI commands of the DAG store: tokens, repositories, versions."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from dagstore.scopes import SCOPES
from dagstore.settings import Settings
from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, DatabaseUrl, Home, Token, client_settings
from pinflow.cli.render import console, short_time, table

if TYPE_CHECKING:
    from dagstore.db import Database

token_app = typer.Typer(help="Create, list and revoke API tokens (reads and writes the database).")
repo_app = typer.Typer(help="Repositories of the DAG store.")


def _database(home: str | None, database_url: str | None) -> Database:
    """The database, schema at head (SQLAlchemy and Alembic load only for these commands)."""
    from dagstore.db import Database
    from pinflow.migrate import upgrade

    settings = Settings.load(home=home, database_url=database_url)
    settings.make_home()
    db = Database(settings.database_url)
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
    from dagstore.token import issue_token

    db = _database(home, database_url)
    with db.write() as session:
        token_id, secret = issue_token(session, scope, name)
    print(secret)
    print(f"created token {token_id} ({scope}); `pinflow token list` shows it", file=sys.stderr)


@token_app.command("list")
def token_list(home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Every token: id, name, scope, created, last used, revoked (never the secret: only its
    hash is stored). Last use is recorded to within a few minutes."""
    from dagstore.db import iso
    from dagstore.token import list_tokens

    db = _database(home, database_url)
    with db.read() as session:
        tokens = list_tokens(session)
    rows = table("id", "name", "scope", "created", "last used", "revoked", no_wrap=("id",))
    for t in tokens:
        rows.add_row(
            str(t["id"]),
            t["name"],
            t["scope"],
            *(short_time(iso(t[k])) for k in ("created_at", "last_used_at", "revoked_at")),
        )
    console.print(rows)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id")],
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token at once: every server stops accepting it."""
    from dagstore.token import revoke_token

    db = _database(home, database_url)
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
    print(f"push with: git push {repo['git_url']} {repo['track']}")


@repo_app.command("list")
def repo_list(api_url: ApiUrl = None, token: Token = None) -> None:
    """List repositories."""
    client = ApiClient(client_settings(api_url, token))
    rows = table("name", "track", "strict", "git remote", no_wrap=("git remote",))
    for repo in client.get("/repos")["items"]:
        rows.add_row(repo["name"], repo["track"], str(repo["strict"]), repo["git_url"])
    console.print(rows)


def versions(
    repo: str,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """The versions (commits) of a repository, newest first."""
    client = ApiClient(client_settings(api_url, token))
    items = client.get(f"/repos/{repo}/versions", params={"limit": limit})["items"]
    rows = table("sha", "ref", "pushed at", "author", "message", "dags", "errors")
    for v in items:
        rows.add_row(
            v["sha"][:12],
            v["ref"].removeprefix("refs/heads/"),
            short_time(v["pushed_at"]),
            v["author"].split(" <")[0],
            v["message"].strip().splitlines()[0] if v["message"].strip() else "",
            ", ".join(v["dags"]),
            str(len(v["errors"])) if v["errors"] else "",
        )
    console.print(rows)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
    app.add_typer(repo_app, name="repo")
    app.command("versions")(versions)

"""`pinflow db clean`: delete old finished runs with their tasks, tries and logs
(`scheduler.clean` says what is kept whatever its age)."""

from __future__ import annotations

from typing import Annotated

import typer

from dagstore.core.durations import parse_age
from dagstore.core.settings import Settings
from pinflow.cli.options import DatabaseUrl, Home


def db_clean(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Delete finished runs that ended longer ago than this: 90d, 12h, 2w, 1d12h",
        ),
    ],
    dag: Annotated[str | None, typer.Option("--dag", help="Only this DAG's runs")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be deleted; delete nothing")
    ] = False,
    batch: Annotated[
        int, typer.Option(min=1, max=10_000, help="Runs deleted per transaction")
    ] = 500,
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete finished runs older than --older-than, with their task instances, tries and
    logs, in short batches. Never an unfinished run, the newest run of a DAG, or a run of a
    backfill still in progress; git versions and keep refs are never touched."""
    from pinflow.cli.server import check_urls
    from pinflow.cli.store import existing_database
    from scheduler.clean import check_age, clean_history

    age = check_age(parse_age(older_than))
    check_urls(Settings.load(home=home, database_url=database_url), redis=False)
    db = existing_database(home, database_url)  # never creates one
    try:
        print(clean_history(db, age, dag_id=dag, dry_run=dry_run, batch=batch).summary())
    finally:
        db.dispose()

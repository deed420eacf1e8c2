"""Alembic environment: runs on the connection `pinflow.migrate` hands over."""

from __future__ import annotations

from alembic import context

import dagstore.core.models  # noqa: F401  (registers the store's tables)
import dagstore.git.models  # noqa: F401  (the git store's)
import scheduler.models  # noqa: F401  (and the scheduler's)
from dagstore.core.db import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: build an engine from the ini URL
    from dagstore.core.db import make_engine

    connection = make_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

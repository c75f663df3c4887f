"""Alembic environment: the engine comes from pipeline.db, the metadata from pipeline.models."""

from alembic import context
from sqlmodel import SQLModel

import pipeline.models  # noqa: F401 - registers the tables

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()

"""Alembic environment: the engine comes from gateway (no alembic.ini to keep in step)."""

from alembic import context
from sqlmodel import SQLModel

from gateway.store import models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata
engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()

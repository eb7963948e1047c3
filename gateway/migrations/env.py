"""Alembic environment: runs migrations against the URL the gateway passes in."""

from alembic import context
from sqlmodel import SQLModel

from gateway.store import db

config = context.config
target_metadata = SQLModel.metadata


def run() -> None:
    engine = db.make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()

"""Alembic environment: runs migrations against the URL the gateway passes in."""

from alembic import context
from sqlmodel import SQLModel

from gateway.store import db

config = context.config
target_metadata = SQLModel.metadata


# Several gateway processes may start at once on one PostgreSQL database (replicas without the chart's
# migration Job): the first to take this lock migrates, the others wait and find the schema current.
MIGRATION_LOCK = 7_263_001


def run() -> None:
    engine = db.make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            context.run_migrations()
    engine.dispose()


run()

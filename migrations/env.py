"""Alembic environment: the URL comes from the caller or from the service's configuration."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.core.db.engine import make_engine
from service.core.db.tables import Base
from service.core.settings import is_sqlite, load_config

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    """Return the URL set by service.core.db.engine.upgrade_database, else DATABASE_URL."""
    return config.get_main_option("sqlalchemy.url") or load_config()["DATABASE_URL"]


def run_migrations_offline() -> None:
    """Emit SQL without a connection."""
    url = database_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=is_sqlite(url))
    with context.begin_transaction():
        context.run_migrations()


def check_foreign_keys(connection: Connection) -> None:
    """Raise if a SQLite table holds a row whose foreign key names no row (checked after migrating,
    as SQLite's own enforcement is off while migrating)."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        shown = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _fk in broken[:10])
        raise RuntimeError(f"the migrations left {len(broken)} rows whose foreign key names no row: {shown}")


def run_migrations_online() -> None:
    """Run migrations on a live connection; SQLite needs batch mode to alter tables.

    On SQLite the connection has foreign keys off: batch mode rebuilds a table by copying it
    and dropping the original, and with foreign keys on that DROP deletes (cascades to) every
    row referring to it, e.g. all job epochs and checkpoints when `jobs` is rebuilt.
    """
    url = database_url()
    sqlite = is_sqlite(url)
    engine = make_engine(url, foreign_keys=not sqlite)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=sqlite)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                check_foreign_keys(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

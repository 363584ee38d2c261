"""Alembic environment: the URL comes from the caller or from the service's configuration."""

from __future__ import annotations

from alembic import context

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


def run_migrations_online() -> None:
    """Run migrations on a live connection; SQLite needs batch mode to alter tables."""
    url = database_url()
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=is_sqlite(url))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

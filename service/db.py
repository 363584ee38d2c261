"""Database engine, sessions and schema upgrades (Alembic) for the API and the workers."""

from __future__ import annotations

from pathlib import Path

import fcntl
from typing import TYPE_CHECKING

import click
from flask import Flask, current_app
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.config import is_sqlite

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs that name no driver (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so the API and a worker can share it."""
    url = normalize_url(url)
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> AlembicConfig:
    """Return an Alembic configuration for migrations/ and the given database."""
    # Imported here: workers never migrate, and Alembic costs them start-up time.
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser interpolates '%', which URL-encoded passwords contain.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the database schema up to the given Alembic revision."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def get_session_factory() -> sessionmaker[Session]:
    """Return the current app's session factory."""
    return current_app.extensions["backprop.sessions"]


def get_session() -> Session:
    """Return a new session for the current app; use it as a context manager."""
    return get_session_factory()()


def init_app(app: Flask) -> None:
    """Attach an engine and session factory to the app and register `flask db upgrade`."""
    url = app.config["DATABASE_URL"]
    engine = make_engine(url)
    app.extensions["backprop.engine"] = engine
    app.extensions["backprop.sessions"] = make_session_factory(engine)
    if is_sqlite(url) and app.config.get("UPGRADE_ON_START", True):
        # Embedded mode has no separate migrate step: the API upgrades on start. Several
        # API processes (gunicorn workers) may start at once, so they take turns.
        lock_path = Path(app.config["DATA_DIR"]) / ".migrate.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            upgrade_database(url)

    @app.cli.group("db")
    def db_group() -> None:
        """Manage the database schema."""

    @db_group.command("upgrade")
    @click.argument("revision", default="head")
    def db_upgrade(revision: str) -> None:
        """Upgrade the schema to REVISION (default head) and prepare an SQLAlchemy broker."""
        from .queue import prepare_broker

        upgrade_database(current_app.config["DATABASE_URL"], revision)
        prepare_broker(current_app.config)
        click.echo(f"database upgraded to {revision}")

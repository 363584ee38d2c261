"""The app's database: one engine and session factory per app, and the embedded mode's upgrade on start."""

from __future__ import annotations

import fcntl
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.engine import make_engine, make_session_factory, upgrade_database
from service.core.settings import is_sqlite


def get_session_factory() -> sessionmaker[Session]:
    """Return the current app's session factory."""
    return current_app.extensions["backprop.sessions"]


def get_session() -> Session:
    """Return a new session for the current app; use it as a context manager."""
    return get_session_factory()()


def init_app(app: Flask) -> None:
    """Attach an engine and session factory to the app; embedded mode upgrades the schema here."""
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

"""Alembic migrations create exactly the tables the models describe, and go down and up again."""

from __future__ import annotations

from sqlalchemy import inspect


def _differences(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.db import make_engine
    from service.tables import Base

    engine = make_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return diff


def test_sqlite_schema_matches_the_models_and_downgrades(tmp_path):
    from service.db import alembic_config, make_engine, upgrade_database
    from alembic import command

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url)
    assert _differences(url) == []
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    upgrade_database(url)
    assert _differences(url) == []


def test_postgres_schema_matches_the_models(postgres_url):
    assert _differences(postgres_url) == []

"""Alembic migrations create exactly the tables the models describe, and go down and up again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect

from tests.conftest import require_postgres


def _differences(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.core.db.engine import make_engine
    from service.core.db.tables import Base

    engine = make_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return diff


def test_sqlite_schema_matches_the_models_and_downgrades(tmp_path):
    from alembic import command

    from service.core.db.engine import alembic_config, make_engine, upgrade_database

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


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database of its own: a SQLite file, or a PostgreSQL database dropped at the end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    import sqlalchemy as sa

    from service.core.db.engine import normalize_url

    admin_url = require_postgres()
    name = f"backprop_mig_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_url(admin_url).rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_0003_gives_existing_rows_the_default_tenant_and_goes_back(empty_database):
    import sqlalchemy as sa
    from alembic import command

    from service.core.db.engine import alembic_config, make_engine, upgrade_database

    url = empty_database
    upgrade_database(url, "0002")
    engine = make_engine(url)
    with engine.begin() as connection:  # rows stored before tenancy
        connection.execute(sa.text(
            "INSERT INTO networks (id, name, definition, created_at) VALUES ('net_1', 'n', '{}', CURRENT_TIMESTAMP)"))
        connection.execute(sa.text(
            "INSERT INTO jobs (id, status, dataset_id, network, training, device, epochs, epoch, "
            "cancel_requested, attempt, deliveries, created_at) VALUES ('job_1', 'queued', 'ds_1', '{}', '{}', "
            "'cpu', 1, 0, false, 0, 0, CURRENT_TIMESTAMP)"))
    upgrade_database(url, "0003")
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT tenant_id FROM networks")).scalar_one() == "default"
        assert connection.execute(sa.text("SELECT tenant_id FROM jobs")).scalar_one() == "default"
        assert connection.execute(sa.text("SELECT id FROM tenants")).scalars().all() == ["default"]
    names = {table: {c["name"] for c in inspect(engine).get_columns(table)}
             for table in ("datasets", "networks", "jobs", "models")}
    assert all("tenant_id" in columns for columns in names.values())
    assert {"ix_jobs_tenant_id"} <= {i["name"] for i in inspect(engine).get_indexes("jobs")}

    command.downgrade(alembic_config(url), "0002")
    engine.dispose()
    engine = make_engine(url)
    inspector = inspect(engine)
    assert not {"tenants", "api_keys"} & set(inspector.get_table_names())
    assert all("tenant_id" not in {c["name"] for c in inspector.get_columns(t)}
               for t in ("datasets", "networks", "jobs", "models"))
    with engine.connect() as connection:  # the rows themselves stay
        assert connection.execute(sa.text("SELECT id FROM jobs")).scalars().all() == ["job_1"]
    engine.dispose()
    upgrade_database(url)
    assert _differences(url) == []

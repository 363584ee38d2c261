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


def _row_counts(url: str) -> dict[str, int]:
    """Count the rows of every table the models describe."""
    import sqlalchemy as sa

    from service.core.db.engine import make_engine
    from service.core.db.tables import Base

    engine = make_engine(url)
    with engine.connect() as connection:
        counts = {table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                  for table in Base.metadata.sorted_tables}
    engine.dispose()
    return counts


def _populate(url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Store what a service in use holds: a dataset, a trained model (its job's epochs), and a
    job left running with its epochs and a checkpoint; return their ids."""
    import io

    from service import create_app
    from service.core.db.engine import make_session_factory
    from service.core.tenancy.keys import create_key
    from tests.conftest import BLOBS_COLUMNS, RecordingQueue, blobs_rows, client_with_key, csv_text
    from tests.helpers import abandon_after, job_settings, mlp, run_job, submit, train

    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path), "DATABASE_URL": url,
                      "QUEUE": RecordingQueue(), "UPGRADE_ON_START": False, "AUTH": "on"})
    try:
        with make_session_factory(app.extensions["backprop.engine"])() as session:
            key = create_key(session, "alice")[1]
            session.commit()
        client = client_with_key(app, key)
        data = csv_text(BLOBS_COLUMNS, blobs_rows(60)).encode()
        dataset = client.post("/v1/datasets", data={"file": (io.BytesIO(data), "blobs.csv")},
                              content_type="multipart/form-data").get_json()
        model_id = train(client, app, dataset["id"], mlp(), epochs=3, batch_size=16)
        running = submit(client, dataset["id"], mlp(), epochs=6, batch_size=16)
        abandon_after(monkeypatch, 2)
        assert run_job(app, running, owner="first", settings=job_settings()) == "abandoned"
        monkeypatch.undo()
    finally:
        app.extensions["backprop.engine"].dispose()
    return {"dataset": dataset["id"], "model": model_id, "running": running}


def test_a_downgrade_to_0003_and_back_keeps_every_row(empty_database, tmp_path, monkeypatch):
    """Going down to 0003 rebuilds `jobs` (batch mode on SQLite): its epochs and checkpoints stay."""
    from alembic import command

    from service.core.db.engine import alembic_config, upgrade_database

    url = empty_database
    upgrade_database(url)
    _populate(url, tmp_path, monkeypatch)
    before = _row_counts(url)
    assert all(before[t] for t in ("datasets", "jobs", "job_epochs", "job_checkpoints", "models")), before

    command.downgrade(alembic_config(url), "0003")
    upgrade_database(url)
    after = _row_counts(url)
    # Going below 0005 joins each payload's chunks back into its one value (it stays readable):
    # the chunks are the one table that comes back empty.
    assert after.pop("dataset_payload_chunks") == 0
    before.pop("dataset_payload_chunks")
    assert after == before
    assert _differences(url) == []


def test_sqlite_migrations_refuse_to_leave_a_row_whose_foreign_key_names_no_row(tmp_path):
    """Foreign keys are off while migrating SQLite; a check afterwards still catches a broken one."""
    import sqlalchemy as sa

    from service.core.db.engine import make_engine, upgrade_database

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url, "0004")
    engine = make_engine(url, foreign_keys=False)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO job_epochs (job_id, epoch, record, created_at) "
                                   "VALUES ('job_gone', 1, '{}', CURRENT_TIMESTAMP)"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="job_epochs row 1 -> jobs"):
        upgrade_database(url)

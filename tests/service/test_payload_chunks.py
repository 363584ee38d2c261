"""Dataset payloads are stored in chunks (migration 0005) and read back byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import event, func, select, update

from service.core.data.parsing import ParsedTable, sha256
from service.core.db import store
from service.core.db.store import PAYLOAD_CHUNK_BYTES, load_table, store_payload
from service.core.db.tables import Dataset, DatasetPayload, DatasetPayloadChunk
from tests.conftest import csv_text
from tests.helpers import both_databases


def big_table(n_rows: int = 150_000) -> ParsedTable:
    """A table whose .npz (12 float32 columns, about 7 MB) is larger than one chunk."""
    values = np.random.default_rng(1).normal(size=(n_rows, 12)).astype(np.float32)
    return ParsedTable(columns=[{"name": f"x{i}", "kind": "numeric"} for i in range(12)], values=values)


def chunks_of(session, digest: str) -> list[bytes]:
    return list(session.scalars(select(DatasetPayloadChunk.data).where(DatasetPayloadChunk.sha256 == digest)
                                .order_by(DatasetPayloadChunk.seq)))


@both_databases
def test_a_payload_larger_than_a_chunk_round_trips_byte_for_byte(app, tmp_path):
    table = big_table()
    expected = table.to_npz()
    assert len(expected) > PAYLOAD_CHUNK_BYTES
    sessions = app.extensions["backprop.sessions"]
    digest = store_payload(sessions, table)
    assert digest == sha256(expected)
    with sessions() as session:
        parts = chunks_of(session, digest)
        row = session.get(DatasetPayload, digest)
        assert row.npz == b"" and row.size_bytes == len(expected)
        assert len(parts) == -(-len(expected) // PAYLOAD_CHUNK_BYTES)
        assert max(len(p) for p in parts) <= PAYLOAD_CHUNK_BYTES
        assert b"".join(parts) == expected

        loaded = load_table(session, Dataset(id="ds_big", payload_sha256=digest), tmp_path / "cache")
    assert (tmp_path / "cache" / f"{digest}.npz").read_bytes() == expected
    assert loaded.columns == table.columns and np.array_equal(loaded.values, table.values)


@both_databases
def test_no_statement_carries_more_than_a_chunk(app, monkeypatch):
    """The API never hands the driver the whole .npz: each INSERT carries one chunk at most."""
    monkeypatch.setattr(store, "PAYLOAD_CHUNK_BYTES", 64 * 1024)
    largest: list[int] = []

    def record(_conn, _cursor, _statement, parameters, _context, _many):
        for params in parameters if isinstance(parameters, list) else [parameters]:
            values = params.values() if isinstance(params, dict) else params
            for value in values:
                value = getattr(value, "obj", value)  # psycopg wraps bytes in Binary(obj)
                if isinstance(value, (bytes, bytearray, memoryview)):
                    largest.append(len(value))

    engine = app.extensions["backprop.engine"]
    event.listen(engine, "before_cursor_execute", record)
    try:
        digest = store_payload(app.extensions["backprop.sessions"], big_table(20_000))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(largest) > 10 and max(largest) <= 64 * 1024
    with app.extensions["backprop.sessions"]() as session:
        assert sha256(b"".join(chunks_of(session, digest))) == digest


@both_databases
def test_the_same_table_twice_stores_its_chunks_once(app, upload_csv):
    text = csv_text(["a", "b", "label"], [[i, i * 0.5, i % 2] for i in range(50)])
    first = upload_csv(text).get_json()
    second = upload_csv(text, name="again").get_json()
    assert first["sha256"] == second["sha256"]
    with app.extensions["backprop.sessions"]() as session:
        count = session.scalar(select(func.count()).select_from(DatasetPayloadChunk))
        assert count == len(chunks_of(session, first["sha256"])) >= 1


@both_databases
def test_deleting_the_last_dataset_deletes_its_chunks(app, client, upload_csv):
    text = csv_text(["a", "b", "label"], [[i, i * 0.5, i % 2] for i in range(50)])
    one = upload_csv(text).get_json()
    two = upload_csv(text).get_json()
    sessions = app.extensions["backprop.sessions"]
    assert client.delete(f"/v1/datasets/{one['id']}").status_code == 204
    with sessions() as session:
        assert chunks_of(session, one["sha256"])  # still shared with `two`
    assert client.delete(f"/v1/datasets/{two['id']}").status_code == 204
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(DatasetPayloadChunk)) == 0
        assert session.scalar(select(func.count()).select_from(DatasetPayload)) == 0


@both_databases
def test_a_payload_stored_whole_before_0005_stays_readable(app, tmp_path):
    table = big_table(1000)
    npz = table.to_npz()
    digest = sha256(npz)
    with app.extensions["backprop.sessions"]() as session:
        session.add(DatasetPayload(sha256=digest, npz=npz, size_bytes=len(npz)))
        session.commit()
        loaded = load_table(session, Dataset(id="ds_old", payload_sha256=digest), tmp_path / "cache")
    assert np.array_equal(loaded.values, table.values)
    assert (tmp_path / "cache" / f"{digest}.npz").read_bytes() == npz


@both_databases
def test_a_corrupt_chunk_is_a_lookup_error_and_leaves_no_cache_file(app, tmp_path):
    sessions = app.extensions["backprop.sessions"]
    digest = store_payload(sessions, big_table(1000))
    with sessions() as session:
        session.execute(update(DatasetPayloadChunk).where(DatasetPayloadChunk.sha256 == digest)
                        .values(data=b"not the payload"))
        session.commit()
        with pytest.raises(LookupError):
            load_table(session, Dataset(id="ds_bad", payload_sha256=digest), tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


@both_databases
def test_an_unwritable_cache_still_loads_from_the_database(app, tmp_path):
    table = big_table(1000)
    digest = store_payload(app.extensions["backprop.sessions"], table)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would be")
    with app.extensions["backprop.sessions"]() as session:
        loaded = load_table(session, Dataset(id="ds_x", payload_sha256=digest), blocker / "cache")
    assert np.array_equal(loaded.values, table.values)


def test_downgrading_0005_joins_the_chunks_into_one_value(tmp_path, monkeypatch):
    from alembic import command
    from sqlalchemy import inspect
    from sqlalchemy.orm import sessionmaker

    from service.core.db.engine import alembic_config, make_engine, upgrade_database

    monkeypatch.setattr(store, "PAYLOAD_CHUNK_BYTES", 4096)
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    table = big_table(1000)
    digest = store_payload(sessionmaker(engine), table)
    engine.dispose()

    command.downgrade(alembic_config(url), "0004")
    engine = make_engine(url)
    assert "dataset_payload_chunks" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        npz = connection.scalar(select(DatasetPayload.__table__.c.npz))
    assert npz == table.to_npz() and sha256(npz) == digest
    engine.dispose()

    upgrade_database(url)  # and the payload, now whole, stays readable after the upgrade
    engine = make_engine(url)
    with sessionmaker(engine)() as session:
        loaded = load_table(session, Dataset(id="ds_m", payload_sha256=digest), tmp_path / "cache")
    engine.dispose()
    assert np.array_equal(loaded.values, table.values)


@pytest.mark.parametrize("form_memory", [500_000, 100_000])
def test_a_multipart_upload_of_many_read_steps_arrives_whole(app, upload_csv, form_memory):
    """The body is read in steps of MULTIPART_READ_BYTES, kept under half of MAX_FORM_MEMORY_SIZE
    (werkzeug answers 413 when a step would take its buffer past it)."""
    from service.api.app import MULTIPART_READ_BYTES

    app.config["MAX_FORM_MEMORY_SIZE"] = form_memory
    rows = [[i, round(i * 0.25, 2), i % 3] for i in range(60_000)]
    text = csv_text(["a", "b", "label"], rows)
    assert len(text) > 3 * MULTIPART_READ_BYTES
    response = upload_csv(text, name="steps", target="label")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["n_rows"] == 60_000 and body["name"] == "steps" and body["classes"] == [0, 1, 2]
    with app.extensions["backprop.sessions"]() as session:
        table = load_table(session, session.get(Dataset, body["id"]), None)
    assert table.values[-1].tolist() == [59_999, 14_999.75, 2]

"""Each worker host caches dataset payloads by key: a second job does not fetch it again."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from service.core.data.parsing import ParsedTable, sha256
from service.core.db.store import dataset_cache_dir, load_table, payload_key
from service.core.db.tables import Dataset, DatasetPayload
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def uploaded(app, upload_csv) -> Dataset:
    body = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(30))).get_json()
    with app.extensions["backprop.sessions"]() as session:
        dataset = session.get(Dataset, body["id"])
        session.expunge(dataset)
        return dataset


def spoil_payload(app, digest: str) -> None:
    """Make the database copy unreadable, so that a test sees any fetch of it fail."""
    with app.extensions["backprop.sessions"]() as session:
        session.execute(update(DatasetPayload).where(DatasetPayload.sha256 == digest).values(npz=b"gone"))
        session.commit()


def test_second_load_reads_the_cache_not_the_database(app, upload_csv, tmp_path):
    dataset = uploaded(app, upload_csv)
    cache = tmp_path / "cache"
    sessions = app.extensions["backprop.sessions"]
    with sessions() as session:
        first = load_table(session, dataset, cache)
    path = cache / f"{dataset.payload_sha256}.npz"
    assert payload_key(dataset.tenant_id, sha256(path.read_bytes())) == dataset.payload_sha256
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind

    spoil_payload(app, dataset.payload_sha256)  # a fetch would now fail
    with sessions() as session:
        second = load_table(session, dataset, cache)
    assert second.columns == first.columns and (second.values == first.values).all()


def test_a_corrupt_cache_file_is_fetched_again(app, upload_csv, tmp_path):
    dataset = uploaded(app, upload_csv)
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / f"{dataset.payload_sha256}.npz"
    path.write_bytes(b"half a file")
    with app.extensions["backprop.sessions"]() as session:
        table = load_table(session, dataset, cache)
    assert isinstance(table, ParsedTable) and table.n_rows == 30
    assert payload_key(dataset.tenant_id, sha256(path.read_bytes())) == dataset.payload_sha256


def test_missing_payload_without_cache_is_a_lookup_error(app, upload_csv, tmp_path):
    dataset = uploaded(app, upload_csv)
    dataset.payload_sha256 = "0" * 64
    with app.extensions["backprop.sessions"]() as session, pytest.raises(LookupError):
        load_table(session, dataset, tmp_path / "cache")


def test_default_cache_is_under_data_dir(app, upload_csv, tmp_path, monkeypatch):
    from service.core.settings import get_settings

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "host"))
    get_settings.cache_clear()
    assert dataset_cache_dir() == tmp_path / "host" / "dataset-cache"
    dataset = uploaded(app, upload_csv)
    with app.extensions["backprop.sessions"]() as session:
        load_table(session, dataset)
    assert (tmp_path / "host" / "dataset-cache" / f"{dataset.payload_sha256}.npz").is_file()

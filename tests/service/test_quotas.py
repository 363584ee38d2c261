"""Quotas that hold: storage checked and taken under the tenant's lock, epoch records counted,
metrics in pages, lean dataset lists, and payloads addressed per tenant.

Storage is involved throughout, so every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import requests
from sqlalchemy import func, select

from service.core.db.tables import Dataset, DatasetPayload, DatasetPayloadChunk, TrainedModel
from tests.cli_harness import FlaskAdapter
from tests.conftest import BLOBS_COLUMNS, blobs_rows, client_with_key, csv_text
from tests.helpers import both_databases, give_model, mlp, problem, run_job, submit


def post_csv(client: Any, rows: list[list[Any]], header: list[str] = BLOBS_COLUMNS) -> Any:
    """POST a CSV upload; return the response (a test may expect it refused)."""
    data = csv_text(header, rows).encode()
    return client.post("/v1/datasets", data={"file": (io.BytesIO(data), "d.csv")},
                       content_type="multipart/form-data")


def uploaded(client: Any, rows: list[list[Any]]) -> dict[str, Any]:
    response = post_csv(client, rows)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def payload_size(app: Any, digest: str) -> int:
    with app.extensions["backprop.sessions"]() as session:
        return session.scalar(select(DatasetPayload.size_bytes).where(DatasetPayload.sha256 == digest))


def stored(app: Any, tenant: str) -> int:
    from service.core.tenancy.limits import stored_bytes

    with app.extensions["backprop.sessions"]() as session:
        return stored_bytes(session, tenant)


# --- item 1: storage under concurrency ---------------------------------------------------------


@both_databases
def test_concurrent_uploads_of_one_tenant_cannot_share_its_last_bytes(app, api_keys, client, monkeypatch):
    """Eight uploads at once, each slowed between its count and its insert: exactly the two that fit pass."""
    from service.core.tenancy import limits

    app.config["TENANT_MAX_STORED_MB"] = 1
    probe = uploaded(client, blobs_rows(60, seed=100))  # every 60-row blobs payload has this size
    size = payload_size(app, probe["sha256"])
    assert client.delete(f"/v1/datasets/{probe['id']}").status_code == 204
    # Room for two more payloads and a half: the third must be refused.
    give_model(app, "alice", limits.MB - int(2.5 * size))
    count = limits.stored_bytes

    def slow_count(session: Any, tenant: str) -> int:
        counted = count(session, tenant)
        time.sleep(0.2)  # without the lock, every request would count the same room here
        return counted

    monkeypatch.setattr(limits, "stored_bytes", slow_count)
    start = threading.Barrier(8)
    statuses: list[int] = []

    def upload_one(seed: int) -> None:
        own_client = client_with_key(app, api_keys["alice"])
        start.wait()
        statuses.append(post_csv(own_client, blobs_rows(60, seed=seed)).status_code)

    threads = [threading.Thread(target=upload_one, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    monkeypatch.undo()
    assert sorted(statuses) == [201, 201] + [413] * 6
    assert stored(app, "alice") <= limits.MB
    with app.extensions["backprop.sessions"]() as session:
        # The refused uploads left no payload behind (nor its chunks).
        used = set(session.scalars(select(Dataset.payload_sha256)))
        assert len(used) == 2
        assert set(session.scalars(select(DatasetPayload.sha256))) == used
        assert set(session.scalars(select(DatasetPayloadChunk.sha256))) == used


@both_databases
def test_epoch_records_count_toward_the_tenants_storage(app, client):
    dataset = uploaded(client, blobs_rows(60))
    job = submit(client, dataset["id"], mlp((4,), "tanh"), epochs=3, batch_size=16)
    assert run_job(app, job) == "succeeded"
    with app.extensions["backprop.sessions"]() as session:
        payload = session.scalar(select(DatasetPayload.size_bytes))
        weights = session.scalar(select(func.length(TrainedModel.weights)))
    records = client.get(f"/v1/jobs/{job}/metrics").get_json()["epochs"]
    assert len(records) == 3
    estimate = sum(len(json.dumps(record)) for record in records)
    epochs = stored(app, "alice") - payload - weights
    assert epochs == estimate  # each record counts as its stored JSON text
    assert stored(app, "bob") == 0


# --- item 1: metrics in pages ------------------------------------------------------------------


@both_databases
def test_job_metrics_come_in_pages(app, client, bob_client):
    dataset = uploaded(client, blobs_rows(60))
    job = submit(client, dataset["id"], mlp((4,), "tanh"), epochs=5, batch_size=16)
    assert run_job(app, job) == "succeeded"
    whole = client.get(f"/v1/jobs/{job}/metrics").get_json()
    assert [r["epoch"] for r in whole["epochs"]] == [1, 2, 3, 4, 5] and whole["next_cursor"] is None
    assert whole["job_id"] == job and whole["status"] == "succeeded"
    seen, cursor, pages = [], None, 0
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = client.get(f"/v1/jobs/{job}/metrics{query}").get_json()
        assert len(page["epochs"]) <= 2 and page["job_id"] == job
        seen += page["epochs"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == whole["epochs"]  # oldest first, each epoch once
    assert problem(client.get(f"/v1/jobs/{job}/metrics?limit=0"), 422)["errors"][0]["field"] == "limit"
    for cursor in ("x", "-1", "²", "9" * 30):
        body = problem(client.get(f"/v1/jobs/{job}/metrics?cursor={cursor}"), 422)
        assert body["errors"][0]["field"] == "cursor"
    problem(bob_client.get(f"/v1/jobs/{job}/metrics?limit=2"), 404)


@both_databases
def test_the_client_follows_the_metrics_pages(app, client):
    from service.client import Client

    dataset = uploaded(client, blobs_rows(60))
    job = submit(client, dataset["id"], mlp((4,), "tanh"), epochs=4, batch_size=16)
    assert run_job(app, job) == "succeeded"
    session = requests.Session()
    session.mount("http://", FlaskAdapter(client))
    history = Client("http://testserver", session=session).job_metrics(job, page_size=3)
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3, 4]  # two pages, joined
    assert history["job_id"] == job and history["status"] == "succeeded"
    assert history["next_cursor"] is None


# --- item 2: lean lists ------------------------------------------------------------------------


@both_databases
def test_the_dataset_list_summarises_columns_and_the_dataset_has_them(client):
    header = [f"x{i}" for i in range(300)] + ["label"]
    rows = [[(r * 7 + i) % 13 for i in range(300)] + [r % 2] for r in range(20)]
    created = post_csv(client, rows, header)
    assert created.status_code == 201, created.get_data(as_text=True)
    listed = client.get("/v1/datasets")
    item = listed.get_json()["items"][0]
    assert "columns" not in item and "features" not in item
    assert item["n_columns"] == 301 and item["n_features"] == 300 and item["targets"] == ["label"]
    assert len(listed.get_data()) < 2000  # a summary, not 301 column descriptions
    full = client.get(f"/v1/datasets/{item['id']}").get_json()
    assert len(full["columns"]) == 301 and len(full["features"]) == 300
    assert {k: v for k, v in full.items() if k in item} == {k: v for k, v in item.items() if k in full}


# --- item 3: payloads per tenant ---------------------------------------------------------------


@both_databases
def test_another_tenants_identical_upload_stores_its_own_payload(app, client, bob_client, tmp_path):
    from service.core.db import store

    rows = blobs_rows(50, seed=7)
    mine = uploaded(client, rows)
    theirs = uploaded(bob_client, rows)
    assert theirs["sha256"] != mine["sha256"]  # bob's upload never found alice's payload
    with app.extensions["backprop.sessions"]() as session:
        assert session.scalar(select(func.count()).select_from(DatasetPayload)) == 2
        size = session.scalar(select(DatasetPayload.size_bytes).where(DatasetPayload.sha256 == theirs["sha256"]))
    assert stored(app, "bob") == size == stored(app, "alice")  # counted for bob as his own
    # Within a tenant the same file is still stored once.
    again = uploaded(bob_client, rows)
    assert again["sha256"] == theirs["sha256"] and stored(app, "bob") == size
    # Deleting bob's datasets keeps alice's payload, and deletes his.
    for dataset in (theirs, again):
        assert bob_client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    with app.extensions["backprop.sessions"]() as session:
        assert set(session.scalars(select(DatasetPayload.sha256))) == {mine["sha256"]}
        # The workers' cache by key: fetched once, then read from disk, and a bad file fetched again.
        dataset = session.get(Dataset, mine["id"])
        first = store.load_table(session, dataset, cache_dir=tmp_path)
        cached = tmp_path / f"{mine['sha256']}.npz"
        assert cached.is_file()
        assert store.load_table(session, dataset, cache_dir=tmp_path).n_rows == first.n_rows == 50
        cached.write_bytes(b"not the payload")
        assert store.load_table(session, dataset, cache_dir=tmp_path).n_rows == 50
        assert cached.read_bytes() != b"not the payload"


def test_holding_a_tenant_without_a_row_makes_its_row_so_the_lock_holds(app):
    # An UPDATE of no row locks nothing on PostgreSQL: two requests would count side by side.
    from service.core.db.tables import Tenant
    from service.core.tenancy.limits import hold_tenant

    with app.extensions["backprop.sessions"]() as session:
        assert session.get(Tenant, "carol") is None
        hold_tenant(session, "carol")
        session.commit()
    with app.extensions["backprop.sessions"]() as session:
        assert session.get(Tenant, "carol") is not None

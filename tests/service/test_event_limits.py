"""Live-event streams cannot exhaust the API: caps on open streams, revoked keys, the backlog in pages.

Caps and revocation need no second database (the counts live in the API process);
the backlog is read from the store, so those tests run on SQLite and PostgreSQL.
The same limits with real gunicorn processes and sockets: tests/e2e/test_event_limits.py.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest
from sqlalchemy import event, insert, update

from service.core.db.tables import ApiKey, JobEpoch
from service.core.ids import utcnow
from tests.conftest import BLOBS_COLUMNS, blobs_rows, client_with_key, csv_text
from tests.helpers import both_databases, mlp, problem, set_row, submit
from tests.service.test_events import parse_events

# A stream the test client reads whole (one that ought to be refused) ends soon rather than at 300 s.
SHORT_STREAMS = {"EVENTS_POLL_S": 0.05, "EVENTS_MAX_S": 1.0}


@pytest.fixture
def job_id(client, upload_csv) -> str:
    """A queued job of alice's: its stream stays open (heartbeats) until its time limit."""
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()
    return submit(client, dataset["id"], mlp((4,)), epochs=2, batch_size=16)


@pytest.fixture
def bob_job_id(bob_client) -> str:
    response = bob_client.post("/v1/datasets", json={"columns": BLOBS_COLUMNS, "data": blobs_rows(40)})
    assert response.status_code == 201, response.get_json()
    return submit(bob_client, response.get_json()["id"], mlp((4,)), epochs=2, batch_size=16)


def open_stream(client: Any, job_id: str) -> Any:
    """Start a stream and leave it open (its slot is held until the response is closed)."""
    response = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    return response


def close_all(responses: list[Any]) -> None:
    """Close streams the test client holds, the last opened first.

    Each pushed its request context on this one thread (gunicorn gives each its own), and
    Flask pops them in order.
    """
    for response in reversed(responses):
        response.close()


def add_epochs(app: Any, job_id: str, count: int, layers: int = 4) -> None:
    """Store `count` epoch records of a job, as a worker's progress transactions do, in one insert."""
    def record(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "loss": 1.0 / epoch, "val_loss": 1.1 / epoch, "accuracy": 0.5, "flags": [],
                "layers": {f"dense_{i}": {"grad_norm": 0.1 * i, "weight_norm": 1.0 + i} for i in range(layers)},
                "samples_per_second": 1000.0}

    with app.extensions["backprop.sessions"]() as session:
        session.execute(insert(JobEpoch), [{"job_id": job_id, "epoch": epoch, "record": record(epoch)}
                                           for epoch in range(1, count + 1)])
        session.commit()
    set_row(app, job_id, status="succeeded", epoch=count)


# --- caps ---------------------------------------------------------------------------------------


def test_a_tenant_past_its_stream_cap_gets_429_with_retry_after(app, client, job_id):
    app.config.update(EVENTS_MAX_STREAMS_PER_TENANT=2, EVENTS_MAX_STREAMS_PER_PROCESS=10, **SHORT_STREAMS)
    held = [open_stream(client, job_id) for _ in range(2)]
    assert [r.status_code for r in held] == [200, 200]
    refused = client.get(f"/v1/jobs/{job_id}/events")
    body = problem(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    assert body["errors"][0]["field"] == "EVENTS_MAX_STREAMS_PER_TENANT"
    assert body["type"] == "urn:backprop:problem:event-stream-limit"
    assert "2" in body["detail"] and "alice" in body["detail"]

    held.pop().close()  # a stream that ends gives its slot back
    again = open_stream(client, job_id)
    assert again.status_code == 200
    close_all([*held, again])


def test_the_process_cap_counts_every_tenant_and_leaves_other_requests_answered(
        app, client, bob_client, job_id, bob_job_id):
    app.config.update(EVENTS_MAX_STREAMS_PER_TENANT=2, EVENTS_MAX_STREAMS_PER_PROCESS=3, **SHORT_STREAMS)
    held = [open_stream(client, job_id), open_stream(client, job_id), open_stream(bob_client, bob_job_id)]
    assert [r.status_code for r in held] == [200, 200, 200]
    refused = bob_client.get(f"/v1/jobs/{bob_job_id}/events")
    body = problem(refused, 429)
    assert body["errors"][0]["field"] == "EVENTS_MAX_STREAMS_PER_PROCESS"
    assert refused.headers["Retry-After"]
    # Everything but a new stream is still served.
    assert bob_client.get(f"/v1/jobs/{bob_job_id}").status_code == 200
    assert client.get("/v1/jobs").status_code == 200
    close_all(held)
    freed = open_stream(bob_client, bob_job_id)
    assert freed.status_code == 200
    freed.close()


def test_refused_and_finished_streams_leave_no_slot_taken(app, client, job_id):
    app.config.update(EVENTS_MAX_STREAMS_PER_TENANT=1, EVENTS_MAX_STREAMS_PER_PROCESS=1,
                      EVENTS_POLL_S=0.01, EVENTS_MAX_S=0.05)
    for _ in range(3):  # each runs to its time limit and is closed by the test client
        assert client.get(f"/v1/jobs/{job_id}/events").status_code == 200
    problem(client.get("/v1/jobs/job_nope/events"), 404)
    problem(client.get(f"/v1/jobs/{job_id}/events?last_event_id=x"), 422)
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 200


def test_auth_off_caps_the_process_only(app, job_id):
    """With AUTH=off everything is tenant `default`: one user, whose streams only the process cap bounds."""
    app.config.update(AUTH="off", EVENTS_MAX_STREAMS_PER_TENANT=1, EVENTS_MAX_STREAMS_PER_PROCESS=2,
                      **SHORT_STREAMS)
    from service.core.db.tables import DEFAULT_TENANT

    set_row(app, job_id, tenant_id=DEFAULT_TENANT)
    anonymous = client_with_key(app, None)
    held = [open_stream(anonymous, job_id) for _ in range(2)]
    assert [r.status_code for r in held] == [200, 200]
    body = problem(anonymous.get(f"/v1/jobs/{job_id}/events"), 429)
    assert body["errors"][0]["field"] == "EVENTS_MAX_STREAMS_PER_PROCESS"
    close_all(held)


# --- a revoked key ------------------------------------------------------------------------------


def test_a_stream_ends_within_the_key_cache_ttl_when_its_key_is_revoked(app, client, job_id):
    ttl_s = 1.0
    app.extensions["backprop.keys"].ttl_s = ttl_s
    app.extensions["backprop.keys"].clear()  # the fixtures' requests remembered alice's key for 10 s
    app.config.update(EVENTS_POLL_S=0.05, EVENTS_HEARTBEAT_S=0.5, EVENTS_MAX_S=12)
    response = open_stream(client, job_id)
    chunks = iter(response.response)
    assert next(chunks).startswith(b"retry:")
    with app.extensions["backprop.sessions"]() as session:  # as `keys revoke` in another process does
        session.execute(update(ApiKey).where(ApiKey.tenant_id == "alice").values(revoked_at=utcnow()))
        session.commit()
    revoked_at = time.monotonic()
    rest = b"".join(chunks)
    ended_after = time.monotonic() - revoked_at
    response.close()
    assert ended_after < ttl_s + 5, f"the stream went on for {ended_after:.1f} s after the revocation"
    comments = [e["comment"] for e in parse_events(rest.decode()) if "comment" in e]
    assert "revoked" in comments[-1], comments
    assert client.get(f"/v1/jobs/{job_id}").status_code == 401


# --- the backlog in pages -----------------------------------------------------------------------


@both_databases
def test_the_backlog_is_read_in_pages_and_arrives_whole_and_in_order(app, client, job_id):
    add_epochs(app, job_id, 10)
    app.config.update(EVENTS_BACKLOG_PAGE=3)
    fetched: list[int] = []

    def count_rows(conn, cursor, statement, parameters, context, executemany):
        if "FROM job_epochs" in statement:
            fetched.append(statement.count("LIMIT"))

    engine = app.extensions["backprop.engine"]
    event.listen(engine, "after_cursor_execute", count_rows)
    try:
        whole = parse_events(client.get(f"/v1/jobs/{job_id}/events").get_data(as_text=True))
        resumed = parse_events(client.get(f"/v1/jobs/{job_id}/events",
                                          headers={"Last-Event-ID": "4"}).get_data(as_text=True))
    finally:
        event.remove(engine, "after_cursor_execute", count_rows)
    assert [e["id"] for e in whole if e.get("event") == "epoch"] == [str(n) for n in range(1, 11)]
    assert [e["id"] for e in resumed if e.get("event") == "epoch"] == [str(n) for n in range(5, 11)]
    for events in (whole, resumed):
        assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    # 10 records in pages of 3: four queries (the last one short); resumed after 4, two full
    # pages and an empty one. Each query asks for one page.
    assert len(fetched) == 4 + 3 and all(fetched), fetched


@both_databases
def test_a_long_backlog_streams_in_bounded_memory(app, client, job_id):
    epochs = 20_000
    add_epochs(app, job_id, epochs)  # read at the default EVENTS_BACKLOG_PAGE
    response = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    sent = 0
    tracemalloc.start()
    try:
        for chunk in response.response:  # read as a client does, keeping nothing
            sent += chunk.count(b"event: epoch")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        response.close()
    assert sent == epochs
    print(f"\npeak traced memory streaming {epochs:,} epochs: {peak / 2**20:.1f} MB")
    # One page of records at a time: a few MB at most, where the whole backlog is some 100 MB.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB while streaming {epochs:,} epochs"

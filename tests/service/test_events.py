"""Live job events: Server-Sent Events read from the epoch records."""

from __future__ import annotations

import json

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import mlp, problem, run_job, submit

MLP = mlp((4,))


def parse_events(text: str) -> list[dict]:
    """Split an event stream into {event, id, data} dicts; comments are kept as {comment}."""
    events = []
    for block in text.strip().split("\n\n"):
        event: dict = {}
        for line in block.splitlines():
            if line.startswith(":"):
                event["comment"] = line[1:].strip()
            else:
                key, _, value = line.partition(": ")
                event[key] = json.loads(value) if key == "data" else value
        events.append(event)
    return events


@pytest.fixture
def job_id(client, upload_csv) -> str:
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(80))).get_json()
    return submit(client, dataset["id"], MLP, epochs=4, batch_size=16)


def test_finished_job_streams_every_epoch_then_its_status(client, app, job_id):
    assert run_job(app, job_id) == "succeeded"
    response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = [e for e in parse_events(response.get_data(as_text=True)) if "event" in e]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["id"] for e in epochs] == ["1", "2", "3", "4"]
    first = epochs[0]["data"]
    assert {"epoch", "loss", "val_loss", "accuracy", "layers", "flags"} <= set(first)
    assert "grad_norm" in first["layers"]["dense_0"]
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"
    assert events[-1]["data"]["model_id"]


def test_last_event_id_resumes_after_that_epoch(client, app, job_id):
    run_job(app, job_id)
    by_header = parse_events(client.get(f"/v1/jobs/{job_id}/events",
                                        headers={"Last-Event-ID": "2"}).get_data(as_text=True))
    by_query = parse_events(client.get(f"/v1/jobs/{job_id}/events?last_event_id=3").get_data(as_text=True))
    assert [e["id"] for e in by_header if e.get("event") == "epoch"] == ["3", "4"]
    assert [e["id"] for e in by_query if e.get("event") == "epoch"] == ["4"]
    assert by_query[-1]["event"] == "status"


def test_a_live_job_stream_heartbeats_and_ends_at_its_time_limit(client, app, job_id):
    app.config.update(EVENTS_POLL_S=0.01, EVENTS_HEARTBEAT_S=0.0, EVENTS_MAX_S=0.05)
    events = parse_events(client.get(f"/v1/jobs/{job_id}/events").get_data(as_text=True))
    comments = [e["comment"] for e in events if "comment" in e]
    assert "heartbeat" in comments and "time limit" in comments[-1]
    assert not [e for e in events if e.get("event")]  # queued: nothing trained yet


def test_cancelled_job_ends_with_its_status(client, job_id):
    client.post(f"/v1/jobs/{job_id}/cancel")
    events = parse_events(client.get(f"/v1/jobs/{job_id}/events").get_data(as_text=True))
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "cancelled"


@pytest.mark.parametrize("path, headers, status", [
    ("/v1/jobs/job_nope/events", {}, 404),
    ("/v1/jobs/{job}/events?last_event_id=x", {}, 422),
    ("/v1/jobs/{job}/events", {"Last-Event-ID": "-1"}, 422),
])
def test_bad_event_requests_are_problems(client, job_id, path, headers, status):
    problem(client.get(path.format(job=job_id), headers=headers), status)

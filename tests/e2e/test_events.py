"""Live events through the real API (gunicorn) while a real Celery worker trains; /metrics there."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.helpers import mlp

pytestmark = pytest.mark.slow


def read_events(response: requests.Response) -> list[dict[str, Any]]:
    """Read a Server-Sent Events stream to its end into {event, id, data} dicts."""
    events, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            if "event" in current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = json.loads(value) if key == "data" else value
    return events


def test_events_stream_a_training_job_to_its_end_and_metrics_count_it(stack, pets: dict[str, Any]) -> None:
    dataset = stack.upload_csv(pets["csv"], name="pets-events", target="animal")
    job = stack.start_job({
        "dataset_id": dataset["id"],
        "network": mlp(activation="tanh"),
        "training": {"epochs": 5, "seed": 0},
    })
    with requests.get(stack.url(f"/v1/jobs/{job['id']}/events"), stream=True, timeout=120,
                      headers={"X-Request-ID": "e2e-events", **stack.auth_headers()}) as response:
        assert response.status_code == 200 and response.headers["X-Request-ID"] == "e2e-events"
        events = read_events(response)
    assert [e["id"] for e in events if e["event"] == "epoch"] == ["1", "2", "3", "4", "5"]
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "succeeded"

    # Several gunicorn workers answer here, and HTTP counters are per process: check what
    # every process reads from the database instead.
    metrics = requests.get(stack.url("/metrics"), timeout=10).text
    succeeded = [line for line in metrics.splitlines() if line.startswith('backprop_jobs{status="succeeded"}')]
    assert succeeded and float(succeeded[0].split()[-1]) >= 1

"""Structured logs: JSON lines with the request id (echoed in X-Request-ID) and the job id."""

from __future__ import annotations

import io
import json
import logging

import pytest

from service.core import logs
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text
from tests.helpers import mlp, run_job, submit, train


@pytest.fixture
def log_lines():
    """Capture the root logger's JSON lines; give the lines back parsed."""
    stream = io.StringIO()
    logs.configure("json", "INFO", stream=stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logs.configure()


def test_a_line_is_one_json_object_with_the_request_id(app, client, log_lines):
    @app.get("/boom-log")
    def _logs_something():
        logging.getLogger("service.test").info("hello %s", "world")
        return {}

    response = client.get("/boom-log", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    [line] = [entry for entry in log_lines() if entry["logger"] == "service.test"]
    assert line["message"] == "hello world" and line["level"] == "INFO"
    assert line["request_id"] == "abc-123" and "job_id" not in line and line["time"].endswith("+00:00")


@pytest.mark.parametrize("sent", [None, "", "x" * 200, "bad id; forged=1"])
def test_a_missing_or_malformed_request_id_is_replaced(client, sent):
    headers = {} if sent is None else {"X-Request-ID": sent}
    echoed = client.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert echoed != sent and len(echoed) == 32


def test_problems_and_the_fast_lane_echo_the_request_id(client, app, upload_csv):
    assert client.get("/v1/jobs/nope", headers={"X-Request-ID": "r1"}).headers["X-Request-ID"] == "r1"
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(60))).get_json()
    model_id = train(client, app, dataset["id"], mlp(hidden=()), epochs=1)
    for request_id in ("p1", "p2"):  # the second is answered by the fast lane (the entry is fresh)
        response = client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[0, 0, 0, 0]]},
                               headers={"X-Request-ID": request_id})
        assert response.status_code == 200 and response.headers["X-Request-ID"] == request_id


def test_worker_lines_about_a_job_carry_its_id(client, app, upload_csv, log_lines):
    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(60))).get_json()
    job_id = submit(client, dataset["id"], mlp(hidden=()))
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert run_job(app, job_id, owner="w") == "cancelled"
    worker_lines = [entry for entry in log_lines() if entry["logger"].startswith("workers.")]
    assert worker_lines and all(entry["job_id"] == job_id for entry in worker_lines)
    assert logs.JOB_ID.get() is None  # the context ends with the job


def test_log_format_setting():
    assert logs.log_format({"LOG_FORMAT": "TEXT"}) == "text"
    assert logs.log_format({"LOG_FORMAT": "json"}) == "json"
    with pytest.raises(ValueError):
        logs.log_format({"LOG_FORMAT": "xml"})
    stream = io.StringIO()
    logs.configure("text", "INFO", stream=stream)
    try:
        with logs.job_context("job_1"):
            logging.getLogger("workers.test").warning("stopped")
        assert "WARNING workers.test [job=job_1] stopped" in stream.getvalue()
    finally:
        logs.configure()

"""The schemathesis CLI run of docs/service.md ("The OpenAPI document") against a live app.

`schemathesis run` over every operation, with its default checks and every phase (stateful
included), AUTH on and a key sent, schemathesis.toml's exceptions and hooks
(tests/schemathesis_hooks.py), and seeded resources in BACKPROP_FUZZ_IDS. It must find no
failure and warn of neither missing test data nor a schema validation mismatch: the request
schemas state the API's rules, and the hooks fit generated requests to those JSON Schema
cannot state, so valid requests are served.

The app is the tests' (SQLite, the recording queue) served by Werkzeug in a thread; jobs
are trained in this process as a worker would. Few examples and a fixed seed keep it short.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.schemathesis_hooks import FUZZ_IDS_ENV, seed_resources

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 10
SEED = 1
# What the CLI prints for the two warnings (schemathesis/cli/commands/run/handlers/output.py).
WARNINGS = ("Missing test data", "Schema validation mismatch")


class QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without a log line per request (a run makes a thousand)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture
def live_url(app: Any) -> Iterator[str]:
    """Serve the app on a free local port for the duration of the test."""
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def fuzz_ids(app: Any, client: Any) -> dict[str, Any]:
    """Seed a dataset, network, job and model (and throwaways for the deletes) as tenant alice."""
    from workers.batch_prediction import run_batch_prediction
    from workers.training import run_job

    # Every generated job stays queued (nothing consumes the recording queue): no 429s.
    app.config["TENANT_MAX_CONCURRENT_JOBS"] = 1_000_000
    # A finished job's event stream ends at once.
    app.config["EVENTS_MAX_S"] = 1.0

    def call(method: str, path: str, json: Any = None, files: dict[str, tuple[str, bytes]] | None = None) -> Any:
        if files:
            form = {name: (io.BytesIO(content), filename) for name, (filename, content) in files.items()}
            response = client.open(path, method=method, data=form, content_type="multipart/form-data")
        else:
            response = client.open(path, method=method, json=json)
        assert response.status_code < 300, (path, response.status_code, response.get_data(as_text=True))
        return response.get_json()

    def train(job_id: str) -> str:
        assert run_job(job_id, sessions=app.extensions["backprop.sessions"], owner="fuzz") == "succeeded"
        return call("GET", f"/v1/jobs/{job_id}")["model_id"]

    def finish(batch_prediction_id: str) -> None:
        assert run_batch_prediction(batch_prediction_id, sessions=app.extensions["backprop.sessions"],
                                    owner="fuzz") == "succeeded"

    return seed_resources(call, train, finish)


def test_cli_run_finds_no_failure_and_no_data_warnings(live_url: str, client: Any,
                                                       fuzz_ids: dict[str, Any]) -> None:
    key = client.environ_base["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    env = {**os.environ, FUZZ_IDS_ENV: json.dumps(fuzz_ids), "NO_COLOR": "1"}
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{live_url}/openapi.json",
               "-H", f"Authorization: Bearer {key}", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
               "--workers", "1"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    if os.environ.get("FUZZ_CLI_OUTPUT"):  # where to keep the CLI's report, to read it
        Path(os.environ["FUZZ_CLI_OUTPUT"]).write_text(output)
    assert result.returncode == 0, output
    assert "Test cases:" in output and "failed" not in output.split("Test cases:")[1].splitlines()[1], output
    for warning in WARNINGS:
        assert warning.lower() not in output.lower(), output

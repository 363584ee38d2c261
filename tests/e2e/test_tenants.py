"""Tenancy across real processes: keys made by the operator's command, seen by every API worker."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import BIN, ROOT, Stack, write_csv
from tests.helpers import mlp, wait_for

pytestmark = pytest.mark.slow

# service.api.auth.KEY_CACHE_TTL_S, and some slack for a loaded machine.
REVOCATION_WITHIN_S = 10 + 10


def flask(stack: Stack, *args: str) -> str:
    """Run `flask --app service ARGS` with the stack's environment, as an operator would; return stdout."""
    result = subprocess.run([str(BIN / "flask"), "--app", "service", *args], cwd=ROOT, env=stack.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_another_tenant_sees_nothing_and_a_revoked_key_stops_working(stack: Stack, tmp_path: Path) -> None:
    rows = [[i % 7 * 0.5, (i * 3) % 5 * 0.25, i % 2] for i in range(200)]
    dataset = stack.upload_csv(write_csv(tmp_path / "t.csv", ["a", "b", "y"], rows), target="y")
    job = stack.train({"dataset_id": dataset["id"], "training": {"epochs": 2},
                       "network": mlp((4,), "tanh")})
    predict = f"/v1/models/{job['model_id']}/predict"
    body = {"inputs": [[0.5, 0.25]]}
    for _ in range(4):  # warm the model cache of every API worker: the fast lane would answer
        stack.predict(job["model_id"], body)

    key = flask(stack, "keys", "create", "--tenant", "other").strip()
    other = {"Authorization": f"Bearer {key}"}

    def as_other(method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, stack.url(path), headers=other, timeout=30, **kwargs)

    assert as_other("GET", "/v1/datasets").json()["items"] == []
    assert as_other("GET", "/v1/models").json()["items"] == []
    for method, path in [("GET", f"/v1/datasets/{dataset['id']}"), ("GET", f"/v1/jobs/{job['id']}"),
                         ("GET", f"/v1/models/{job['model_id']}"), ("DELETE", f"/v1/models/{job['model_id']}")]:
        assert as_other(method, path).status_code == 404, (method, path)
    for _ in range(4):  # whichever worker answers, fast lane or view
        response = as_other("POST", predict, json=body)
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
    assert requests.post(stack.url(predict), json=body, timeout=30).status_code == 401
    assert stack.predict(job["model_id"], body)["predictions"]  # still the e2e tenant's

    key_id = next(line.split()[0] for line in flask(stack, "keys", "list", "--tenant", "other").splitlines()
                  if line.startswith("key_"))
    flask(stack, "keys", "revoke", key_id)
    # Every API worker forgets the key within the TTL: four answers in a row are 401.
    wait_for(lambda: all(as_other("GET", "/v1/datasets").status_code == 401 for _ in range(4)),
             REVOCATION_WITHIN_S, 0.5, "every API worker refusing the revoked key")

"""An evaluation survives its worker's death: kill -9 mid-evaluation, and it still ends succeeded, once.

The evaluation is a leased job (workers/scoring.py): the dead worker's lease goes stale,
the reaper publishes the job again, a second worker scores it from the start (attempt 2)
and writes the report with its success while it holds the lease. Real processes,
tests/faults/conftest.py's short recovery settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.client import TERMINAL
from tests.faults.conftest import FAULT_TIMEOUT_S, FaultStack, job_body
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

# Shuffles per feature column: 16 columns of 2,400 rows, a few seconds of passes here.
SLOW_REPEATS = 40


def evaluation_state(stack: FaultStack, evaluation_id: str, until: tuple[str, ...]) -> dict[str, Any]:
    """Poll an evaluation until its status is one of `until`; fail if it ends otherwise first."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        evaluation = last["evaluation"] = stack.request("GET", f"/v1/evaluations/{evaluation_id}")
        if evaluation["status"] in until:
            return evaluation
        if evaluation["status"] in TERMINAL:
            pytest.fail(f"evaluation {evaluation_id} ended {evaluation['status']}, waiting for {until}: "
                        f"{evaluation.get('error')}")
        return None

    return wait_for(reached, FAULT_TIMEOUT_S, stack.poll_s, lambda: f"evaluation {evaluation_id} {until}: "
                                                                   f"{last.get('evaluation')}")


def test_kill_9_mid_evaluation_and_it_still_ends_succeeded_once_with_the_same_report(faulty: FaultStack,
                                                                                      blobs_csv: Path):
    faulty.start(workers=1)
    dataset = faulty.upload_csv(blobs_csv, name="blobs", target="label", task="classification")
    job = faulty.wait_job(faulty.start_job(job_body(dataset["id"], epochs=2))["id"])
    assert job["status"] == "succeeded", job
    model_id = job["model_id"]
    body = {"dataset_id": dataset["id"], "permutation_repeats": SLOW_REPEATS, "seed": 4}

    evaluation_id = faulty.request("POST", f"/v1/models/{model_id}/evaluations", 202, json=body)["id"]
    evaluation_state(faulty, evaluation_id, ("running",))
    faulty.kill("worker-1")  # the main process and its pool: nothing can hand the evaluation back
    killed = faulty.request("GET", f"/v1/evaluations/{evaluation_id}")
    assert (killed["status"], killed["attempt"], killed["report"]) == ("running", 1, None), killed
    second = faulty.start_worker()  # its reaper finds the stale lease and publishes the job again

    done = evaluation_state(faulty, evaluation_id, ("succeeded",))
    assert done["attempt"] == 2 and done["error"] is None, done
    report = done["report"]
    assert report["n_rows"] == dataset["n_rows"] and len(report["permutation_importance"]) == 16
    assert evaluation_id in faulty.log_of(second)
    # One report: the model's one evaluation, as an uninterrupted one with the same seed makes it.
    assert [e["id"] for e in faulty.request("GET", f"/v1/models/{model_id}/evaluations")["items"]] == [
        evaluation_id]
    again = faulty.request("POST", f"/v1/models/{model_id}/evaluations", 202, json=body)["id"]
    uninterrupted = evaluation_state(faulty, again, ("succeeded",))
    print(f"uninterrupted ({faulty.backend}): {uninterrupted['started_at']} to {uninterrupted['finished_at']}")
    assert uninterrupted["attempt"] == 1 and uninterrupted["report"] == report
    assert faulty.request("GET", f"/v1/evaluations/{evaluation_id}") == done  # nothing wrote it again

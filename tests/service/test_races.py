"""Races between requests, with real threads: one of two conflicting requests wins, cleanly.

Each race widens its window with a short sleep inside the request (between reading a row
and committing), so a round that lands in it does not depend on the machine's speed.
"""

from __future__ import annotations

import io
import random
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select

from service.core.db.tables import Dataset, Job
from tests.conftest import BLOBS_COLUMNS, blobs_rows, client_with_key, csv_text
from tests.helpers import both_databases, mlp, problem

# How long each request pauses inside its window; and a generous bound on any wait for a thread.
WINDOW_S = 0.05
WAIT_S = 60.0
# Who is inside its window when the other request starts: the create, the delete, or neither
# (the delete starts after a random delay while the create is in flight).
MODES = ("create first", "delete first", "random")
ROUNDS_PER_MODE = 6


def race_once(app: Any, key: str, dataset_id: str, mode: str, in_window: dict[str, threading.Event],
              delay: float) -> tuple[Any, Any]:
    """POST a job on the dataset and DELETE it from two threads at once; return both answers."""
    answers: dict[str, Any] = {}
    failures: list[BaseException] = []

    def create() -> None:
        if mode == "delete first":
            assert in_window["delete"].wait(WAIT_S)
        answers["create"] = client_with_key(app, key).post(
            "/v1/jobs", json={"dataset_id": dataset_id, "network": mlp(), "training": {"epochs": 1}})

    def delete() -> None:
        if mode == "create first":
            assert in_window["create"].wait(WAIT_S)
        elif mode == "random":
            time.sleep(delay)
        answers["delete"] = client_with_key(app, key).delete(f"/v1/datasets/{dataset_id}")

    def run(request: Any) -> None:
        try:
            request()
        except BaseException as error:  # noqa: BLE001 - reported below, with the round's mode
            failures.append(error)

    threads = [threading.Thread(target=run, args=(create,)), threading.Thread(target=run, args=(delete,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not failures and set(answers) == {"create", "delete"}, f"{mode}: {failures or 'a request hung'}"
    return answers["create"], answers["delete"]


@both_databases
def test_deleting_a_dataset_while_a_job_is_created_on_it_leaves_no_job_without_its_dataset(
        app, api_keys, client, monkeypatch):
    from service.api import datasets as datasets_api
    from service.core.tenancy import limits

    in_window = {"create": threading.Event(), "delete": threading.Event()}
    check_job_slot = limits.check_job_slot
    delete_dataset = datasets_api.delete_dataset

    def slow_check_job_slot(*args: Any) -> None:
        # Job creation has read the dataset by now and commits the job after this.
        in_window["create"].set()
        time.sleep(WINDOW_S)
        check_job_slot(*args)

    def slow_delete_dataset(*args: Any) -> None:
        # The delete has found no active job by now and commits the deletion after this.
        in_window["delete"].set()
        time.sleep(WINDOW_S)
        delete_dataset(*args)

    monkeypatch.setattr(limits, "check_job_slot", slow_check_job_slot)
    monkeypatch.setattr(datasets_api, "delete_dataset", slow_delete_dataset)
    chance = random.Random(14)
    outcomes: list[tuple[str, int, int]] = []
    data = csv_text(BLOBS_COLUMNS, blobs_rows(40)).encode()

    for mode in [m for m in MODES for _ in range(ROUNDS_PER_MODE)]:
        dataset_id = client.post("/v1/datasets", data={"file": (io.BytesIO(data), "d.csv")},
                                 content_type="multipart/form-data").get_json()["id"]
        for event in in_window.values():
            event.clear()
        created, deleted = race_once(app, api_keys["alice"], dataset_id, mode, in_window,
                                     chance.uniform(0, 2 * WINDOW_S))
        outcome = (created.status_code, deleted.status_code)
        outcomes.append((mode, *outcome))

        with app.extensions["backprop.sessions"]() as session:
            dataset_there = session.get(Dataset, dataset_id) is not None
            jobs = session.scalars(select(Job.id).where(Job.dataset_id == dataset_id)).all()
        if outcome == (202, 409):  # the job won: it exists, and so does its dataset
            assert dataset_there and jobs == [created.get_json()["id"]], mode
            problem(deleted, 409)
            assert client.post(f"/v1/jobs/{jobs[0]}/cancel").status_code == 202  # free the job slot
        elif outcome == (422, 204):  # the delete won: no job was made
            assert not dataset_there and jobs == [], mode
            assert [e["field"] for e in problem(created, 422)["errors"]] == ["dataset_id"]
        else:
            pytest.fail(f"{mode}: create {outcome[0]}, delete {outcome[1]}: dataset there {dataset_there}, "
                        f"its jobs {jobs}")

    # The rounds that let one request into its window first went that request's way.
    assert {(c, d) for m, c, d in outcomes if m == "create first"} == {(202, 409)}, outcomes
    assert {(c, d) for m, c, d in outcomes if m == "delete first"} == {(422, 204)}, outcomes

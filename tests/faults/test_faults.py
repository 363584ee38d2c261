"""Jobs survive crashes: the issue's eight failure tests, against real processes.

Each test breaks something (a worker, Redis, the API, a duplicate message) while
a job trains, then checks that the job ends in one terminal state, trained once,
with one model. Recovery settings are short (tests/faults/conftest.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import FaultStack, job_body
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

RESUMED = re.compile(r"resumes from its epoch (\d+) checkpoint")


def submit(stack: FaultStack, blobs_csv: Path, epochs: int = 30) -> str:
    dataset = stack.upload_csv(blobs_csv, name="blobs", target="label", task="classification")
    return stack.start_job(job_body(dataset["id"], epochs))["id"]


def assert_trained_once(stack: FaultStack, job_id: str, attempt: int | None = None) -> dict:
    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", job
    if attempt is not None:
        assert job["attempt"] == attempt, job
    models = stack.models_of(job_id)
    assert [m["id"] for m in models] == [job["model_id"]]
    prediction = stack.predict(job["model_id"], {"inputs": [[0.0] * 16]})
    assert prediction["predictions"][0] in (0, 1, 2)
    epochs = stack.request("GET", f"/v1/jobs/{job_id}/metrics")["epochs"]
    assert [r["epoch"] for r in epochs] == list(range(1, job["progress"]["epoch"] + 1))
    return job


# 1 ----------------------------------------------------------------------------------------------

def test_kill_9_mid_epoch_resumes_on_a_second_worker_from_the_checkpoint(faulty: FaultStack, blobs_csv):
    faulty.start(workers=1)
    job_id = submit(faulty, blobs_csv)
    faulty.wait_job(job_id, until=("running",), min_epoch=3)
    faulty.kill("worker-1")  # the main process and its pool: nothing can hand the job back
    second = faulty.start_worker()

    job = assert_trained_once(faulty, job_id, attempt=2)
    resumed = [int(e) for e in RESUMED.findall(faulty.log_of(second))]
    assert resumed and resumed[0] >= 3, faulty.log_of(second)
    assert job["progress"]["epoch"] == 30


@pytest.mark.parametrize("backend_name", ["sqlite"], indirect=True)
def test_cancelling_a_job_whose_worker_is_down_ends_cancelled(faulty: FaultStack, blobs_csv):
    faulty.start(workers=1)
    job_id = submit(faulty, blobs_csv)
    faulty.wait_job(job_id, until=("running",), min_epoch=1)
    faulty.kill("worker-1")
    assert faulty.request("POST", f"/v1/jobs/{job_id}/cancel", 202)["cancel_requested"] is True
    faulty.start_worker()  # its reaper finds the stale lease and the request to cancel
    job = faulty.wait_job(job_id)
    assert job["status"] == "cancelled" and job["attempt"] == 1 and not faulty.models_of(job_id)


# 2 ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
def test_a_job_longer_than_the_visibility_timeout_is_delivered_again_but_not_trained_twice(
        faulty: FaultStack, blobs_csv):
    faulty.env["VISIBILITY_TIMEOUT_S"] = "2"
    faulty.start(workers=2)
    # Long enough on a fast, idle machine (~65 ms an epoch) to outlast the 2 s timeout
    # and the 1 s restore sweep several times over.
    job_id = submit(faulty, blobs_csv, epochs=120)
    job = assert_trained_once(faulty, job_id, attempt=1)
    logs = "".join(faulty.log_of(name) for name in faulty.workers)
    # Redis did hand the message out again while the job trained; the lease refused it.
    assert f"job {job_id} not claimed (status running)" in logs, logs
    assert job["progress"]["epoch"] == 120


# 3 ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
def test_redis_restarts_while_a_job_runs_and_while_idle(faulty: FaultStack, blobs_csv):
    faulty.start(workers=1)
    job_id = submit(faulty, blobs_csv)
    faulty.wait_job(job_id, until=("running",), min_epoch=2)
    faulty.redis.restart(down_s=2)
    assert_trained_once(faulty, job_id, attempt=1)

    faulty.redis.restart(down_s=2)  # idle: the worker and the API reconnect
    faulty.wait_ready()
    assert_trained_once(faulty, submit(faulty, blobs_csv, epochs=3), attempt=1)
    for name in ("api", "worker-1"):
        assert faulty.procs[name].poll() is None, name


# 4 ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
def test_flushed_redis_loses_queued_messages_and_the_reaper_publishes_them_again(faulty: FaultStack, blobs_csv):
    faulty.start(workers=1)
    running = submit(faulty, blobs_csv, epochs=60)  # still running after the flush, on a fast machine too
    faulty.wait_job(running, until=("running",), min_epoch=1)
    waiting = submit(faulty, blobs_csv, epochs=3)  # queued behind it: its message sits in Redis
    assert faulty.request("GET", f"/v1/jobs/{waiting}")["status"] == "queued"
    faulty.redis.client().flushall()

    assert_trained_once(faulty, running)
    assert_trained_once(faulty, waiting, attempt=1)
    assert re.search(r"'republished': [1-9]", faulty.log_of("worker-1")), faulty.log_of("worker-1")


# 5 ----------------------------------------------------------------------------------------------

def test_restarting_the_api_mid_job_keeps_polling_and_predict_working(faulty: FaultStack, blobs_csv):
    faulty.start(workers=1)
    first = submit(faulty, blobs_csv, epochs=3)
    model_id = assert_trained_once(faulty, first)["model_id"]
    job_id = submit(faulty, blobs_csv)
    faulty.wait_job(job_id, until=("running",), min_epoch=1)

    faulty.signal("api", signal.SIGTERM, group=True)
    faulty.procs["api"].wait(timeout=30)
    faulty.start_api()
    faulty.wait_ready()

    assert faulty.request("GET", f"/v1/jobs/{job_id}")["status"] in ("running", "succeeded")
    assert faulty.predict(model_id, {"inputs": [[0.0] * 16]})["predictions"]
    assert_trained_once(faulty, job_id, attempt=1)


# 6 ----------------------------------------------------------------------------------------------

def test_the_same_job_id_published_twice_is_trained_once(faulty: FaultStack, blobs_csv):
    from service.api.queue import celery_job_queue
    from service.core.settings import load_config

    faulty.start(workers=2)
    job_id = submit(faulty, blobs_csv, epochs=10)
    queue = celery_job_queue(load_config(faulty.env))
    queue.publish(job_id, "cpu")
    queue.publish(job_id, "cpu")
    assert_trained_once(faulty, job_id, attempt=1)

    def refusals() -> int:
        return "".join(faulty.log_of(name) for name in faulty.workers).count(f"job {job_id} not claimed")

    # Three deliveries, one claim: both duplicates are delivered and refused.
    wait_for(lambda: refusals() >= 2, 30, 0.2, f"two refused deliveries of {job_id}")
    assert len(faulty.models_of(job_id)) == 1


# 7 ----------------------------------------------------------------------------------------------

RACER = """
import sys, time
from service.core.db.engine import make_engine, make_session_factory
from workers.lease import JobSettings, claim
url, owner, start, *ids = sys.argv[1:]
sessions = make_session_factory(make_engine(url))
won = []
for index, job_id in enumerate(ids):
    while time.time() < float(start) + 0.2 * index:  # both processes go at the same instant
        pass
    if claim(sessions, job_id, owner, JobSettings()):
        won.append(job_id)
print(" ".join(won))
"""


@pytest.mark.parametrize("backend_name", ["sqlite"])
def test_two_workers_racing_to_claim_a_job_on_sqlite_exactly_one_wins(tmp_path, backend_name):
    from service.core.db.engine import make_engine, make_session_factory, upgrade_database
    from service.core.db.tables import Job
    from service.core.ids import new_id, utcnow

    url = f"sqlite:///{tmp_path / 'race.db'}"
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    ids = [new_id("job") for _ in range(10)]
    with sessions() as session:
        session.add_all([Job(id=job_id, status="queued", dataset_id="ds", network={}, training={},
                             device="cpu", epochs=1, epoch=0, cancel_requested=False, attempt=0,
                             deliveries=0, published_at=utcnow()) for job_id in ids])
        session.commit()
    start = str(time.time() + 2.0)
    racers = [subprocess.Popen([sys.executable, "-c", RACER, url, owner, start, *ids], stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).resolve().parents[2])
              for owner in ("racer-a", "racer-b")]
    won = [set(proc.communicate(timeout=60)[0].split()) for proc in racers]
    assert all(proc.returncode == 0 for proc in racers)
    assert won[0] | won[1] == set(ids) and not won[0] & won[1]
    with sessions() as session:
        for job in session.query(Job):
            assert job.attempt == 1 and job.owner in ("racer-a", "racer-b")
            assert job.id in won[0 if job.owner == "racer-a" else 1]


# 8 ----------------------------------------------------------------------------------------------

def test_sigterm_hands_the_job_back_promptly_and_it_finishes_elsewhere(faulty: FaultStack, blobs_csv):
    faulty.start(workers=1)
    # Still running once the second worker is up (it takes seconds to start), even at
    # ~65 ms an epoch on a fast, idle machine.
    job_id = submit(faulty, blobs_csv, epochs=150)
    faulty.wait_job(job_id, until=("running",), min_epoch=3)
    second = faulty.start_worker()
    faulty.wait_worker_ready(second)

    stopped = time.monotonic()
    faulty.signal("worker-1", signal.SIGTERM)  # what `docker stop` sends: the main process only
    faulty.procs["worker-1"].wait(timeout=60)
    # A warm shutdown waits for the running task: without the hand-back, for the whole job.
    assert "handed back" in faulty.log_of("worker-1")
    assert time.monotonic() - stopped < 30, "the worker held on to its job"

    job = assert_trained_once(faulty, job_id)
    resumed = [int(e) for e in RESUMED.findall(faulty.log_of(second))]
    assert resumed and resumed[0] >= 3, faulty.log_of(second)
    assert job["attempt"] == 1  # a hand-back is not a failed attempt

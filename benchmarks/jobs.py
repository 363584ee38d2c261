"""Jobs as users feel them: dispatch latency and the service's overhead on a training run.

Real processes, as compose and ``make run`` start them: the API under gunicorn
and one Celery worker (``--concurrency 1``), in two modes:

- ``embedded``: SQLite and Kombu's SQLAlchemy transport in a temporary DATA_DIR;
- ``redis``: PostgreSQL (a database of its own at 127.0.0.1:5432) and Redis (an
  empty database number from 8 to 14), skipped when they are unreachable.

Dispatch: POST /v1/jobs of a tiny job to an idle worker, until the job is
`running` (its ``started_at``, written by the worker's claim, minus the moment
the POST was sent). Median of ``--jobs`` (10). Targets: <= 50 ms with Redis,
<= 0.5 s embedded.

Overhead (``--overhead``, about 1.5 minutes per round and mode): a training job
of about ``--seconds`` (30) through the service, from ``started_at`` to
``finished_at`` (loading the dataset, preprocessing, training with per-epoch
progress, heartbeats and checkpoints, saving the model), against the same
``backprop.train`` call on the same encoded data in one process, timed before and
after the job (their mean). A 2-core VM's speed drifts by 10-20% over minutes,
more than the 5% to be measured, so ``--rounds`` (5) alternate the two and the
median round's ratio is reported. Target <= 1.05x. The time outside the epochs
(the service's own work, which the drift barely touches) is reported beside it,
its difference as a share of the in-process time.

Run: ``python benchmarks/jobs.py [--modes embedded,redis] [--overhead] [--no-readme]``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--overhead", action="store_true", help="also the ~30 s training run")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="service jobs, each between two in-process runs")
    parser.add_argument("--blas-threads", type=int, help="BLAS threads of the worker and of this process "
                                                         "(default: the worker's own choice, cores // concurrency)")
    parser.add_argument("--no-readme", action="store_true")
    return parser.parse_args()


ARGS = parse_args()
if ARGS.blas_threads:
    # Before numpy loads, here and (inherited) in the worker.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(ARGS.blas_threads)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._report import append_row, machine  # noqa: E402
from benchmarks._servers import (  # noqa: E402
    api_server,
    auth_headers,
    backends,
    celery_worker,
    create_api_key,
    servers_reachable,
    service_env,
)

SECTION = "Jobs (benchmarks/jobs.py)"
TINY = {"layers": [{"type": "dense", "units": 4, "activation": "relu"}, {"type": "dense", "units": 2}]}
# The overhead workload: 20,000 rows x 32 features, 256-256 relu, batch 64, adam.
OVERHEAD_NETWORK = {"layers": [{"type": "dense", "units": 256, "activation": "relu"},
                               {"type": "dense", "units": 256, "activation": "relu"},
                               {"type": "dense", "units": 2}]}


def table(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    header = ",".join(f"x{i}" for i in range(features)) + ",label\n"
    text = header + "\n".join(",".join(f"{v:.5f}" for v in row) + f",{label}" for row, label in zip(X, y))
    return X, y, text.encode()


def upload(session, base: str, data: bytes) -> str:
    response = session.post(f"{base}/v1/datasets", files={"file": ("data.csv", io.BytesIO(data), "text/csv")})
    response.raise_for_status()
    return response.json()["id"]


def wait(session, base: str, job_id: str, until: tuple[str, ...], timeout: float = 600,
         poll_s: float = 0.005) -> dict:
    """Poll a job until its status is one of `until` (often for dispatch; rarely for a long job,
    whose polling would take CPU from the training it measures)."""
    deadline = time.monotonic() + timeout
    while True:
        job = session.get(f"{base}/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job['status']}")
        time.sleep(poll_s)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def dispatch(session, base: str, jobs: int) -> list[float]:
    """Seconds from sending POST /v1/jobs to the worker's claim, per job, one at a time."""
    _X, _y, data = table(200, 4)
    dataset_id = upload(session, base, data)
    body = {"dataset_id": dataset_id, "network": TINY, "training": {"epochs": 1}}
    wait(session, base, session.post(f"{base}/v1/jobs", json=body).json()["id"], ("succeeded",))  # warm-up
    latencies = []
    for _ in range(jobs):
        time.sleep(0.3)  # the worker is idle, polling its queue
        sent = time.time()
        job = session.post(f"{base}/v1/jobs", json=body).json()
        job = wait(session, base, job["id"], ("succeeded", "failed"))
        latencies.append(stamp(job["started_at"]) - sent)
    return latencies


def overhead(session, base: str, seconds: float, rounds: int) -> tuple[float, float, int, float, float]:
    """Return the median round's (service seconds, in-process seconds), the epochs, and the median
    seconds outside the epochs (service, in-process).

    The time outside the epochs is what the service adds that the machine's drift
    barely touches: loading, preprocessing, progress writes, checkpoints, saving.
    """
    import backprop
    from service.core.data.parsing import describe_target, parse_csv
    from service.core.data.preprocessing import Preprocessor, fit

    X, y, data = table(20_000, 32, seed=1)
    training = {"epochs": 1, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001,
                "validation_split": 0.2, "early_stopping_patience": 0, "seed": 0}
    # The same preprocessing as the worker's, on the same table.
    with tempfile.NamedTemporaryFile(suffix=".csv") as handle:
        handle.write(data)
        handle.flush()
        parsed = parse_csv(handle.name)
    described = describe_target(parsed, None, None)
    train_rows, val_rows = backprop.train_validation_split(parsed.n_rows, training["validation_split"], 0)
    preprocessor = Preprocessor(fit(parsed, described["features"], described["targets"], described["task"],
                                    described["classes"], train_rows))
    X_train, y_train = preprocessor.encode_table(parsed, train_rows), preprocessor.targets_from_table(parsed,
                                                                                                      train_rows)
    validation = (preprocessor.encode_table(parsed, val_rows), preprocessor.targets_from_table(parsed, val_rows))

    def in_process(epochs: int) -> tuple[float, float]:
        """Return (seconds, of which in the epochs)."""
        network = backprop.build(OVERHEAD_NETWORK, input_dim=X_train.shape[1], seed=0)
        started = time.perf_counter()
        history = backprop.train(network, X_train, y_train, validation_data=validation,
                                 **{**training, "epochs": epochs})
        return time.perf_counter() - started, sum(record["duration_s"] for record in history)

    def through_the_service(epochs: int) -> tuple[float, float]:
        """Return (seconds from started_at to finished_at, of which in the epochs)."""
        body = {"dataset_id": dataset_id, "network": OVERHEAD_NETWORK, "training": {**training, "epochs": epochs}}
        job = wait(session, base, session.post(f"{base}/v1/jobs", json=body).json()["id"],
                   ("succeeded", "failed"), poll_s=1.0)
        if job["status"] != "succeeded":
            raise RuntimeError(f"the overhead job failed: {job['error']}")
        records = session.get(f"{base}/v1/jobs/{job['id']}/metrics").json()["epochs"]
        return stamp(job["finished_at"]) - stamp(job["started_at"]), sum(r["duration_s"] for r in records)

    in_process(1)  # warm-up
    epochs = max(1, round(seconds / (in_process(2)[0] / 2)))
    dataset_id = upload(session, base, data)
    results = []  # (ratio, service seconds, in-process seconds)
    outside = []  # (service, in-process) seconds outside the epochs
    before, before_epochs = in_process(epochs)
    for round_ in range(1, rounds + 1):
        service_s, service_epochs = through_the_service(epochs)
        after, after_epochs = in_process(epochs)
        direct_s = (before + after) / 2
        results.append((service_s / direct_s, service_s, direct_s))
        outside.append((service_s - service_epochs, (before + after - before_epochs - after_epochs) / 2))
        print(f"round {round_}: in one process {before:.1f} s before the job and {after:.1f} s after it "
              f"({before_epochs:.1f} and {after_epochs:.1f} s in the epochs); in the service {service_s:.1f} s "
              f"({service_epochs:.1f} s in the epochs, the rest loading, preprocessing, progress and saving): "
              f"{service_s / direct_s:.3f}x")
        before, before_epochs = after, after_epochs
    _ratio, service_s, direct_s = sorted(results)[len(results) // 2]
    return (service_s, direct_s, epochs, statistics.median(o[0] for o in outside),
            statistics.median(o[1] for o in outside))


def main() -> None:
    args = ARGS
    import requests

    where = machine()
    targets = {"embedded": 0.5, "redis": 0.05}
    for mode in args.modes.split(","):
        if mode != "embedded" and not servers_reachable():
            print(f"{mode}: skipped, PostgreSQL or Redis is not reachable at 127.0.0.1")
            continue
        with tempfile.TemporaryDirectory() as data_dir, backends(mode != "embedded",
                                                                 "backprop_bench") as (database_url, broker_url), \
                api_server(data_dir, 1, database_url, broker_url) as base, \
                celery_worker(data_dir, database_url, broker_url), requests.Session() as session:
            session.headers.update(auth_headers(create_api_key(service_env(data_dir, database_url, broker_url))))
            latencies = dispatch(session, base, args.jobs)
            median = statistics.median(latencies)
            target = targets[mode]
            print(f"{mode}: POST /v1/jobs to running: median {median * 1e3:.0f} ms, max "
                  f"{max(latencies) * 1e3:.0f} ms over {len(latencies)} jobs (target <= {target * 1e3:.0f} ms: "
                  f"{median / target:.2f}x of it)")
            if not args.no_readme:
                append_row(SECTION, f"dispatch to running, {mode}, median ms", f"{median * 1e3:.0f}", "target",
                           f"{target * 1e3:.0f}", median / target, "<= 1x", where)
            if args.overhead:
                service_s, direct_s, epochs, service_outside, direct_outside = overhead(
                    session, base, args.seconds, args.rounds)
                ratio = service_s / direct_s
                added = (service_outside - direct_outside) / direct_s
                print(f"{mode}: {epochs}-epoch job, median of {args.rounds} rounds: {service_s:.1f} s in the service "
                      f"(started to finished), {direct_s:.1f} s for backprop.train in one process: {ratio:.3f}x "
                      f"(target <= 1.05x); outside the epochs {service_outside:.2f} s against "
                      f"{direct_outside:.2f} s: the service adds {added:.1%} of the in-process time")
                if not args.no_readme:
                    threads = f", BLAS threads {args.blas_threads}" if args.blas_threads else ""
                    append_row(SECTION, f"training job through the service, {mode}{threads}, median of "
                                        f"{args.rounds} rounds, s", f"{service_s:.1f}",
                               "backprop.train in one process", f"{direct_s:.1f}", ratio, "<= 1.05x", where)
                    append_row(SECTION, f"the same job: seconds outside the epochs (loading, preprocessing, "
                                        f"progress, saving), {mode}, median; ratio: in-process + the difference, over "
                                        f"in-process", f"{service_outside:.2f}",
                               "backprop.train in one process", f"{direct_outside:.2f}",
                               1 + added, "<= 1.05x", where)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()

"""The load test: /predict and job submission together for a minute, with 2 workers training.

The production stack as real processes, started the way the other benchmarks
start it (benchmarks/_servers.py): migrations, the API under gunicorn with
compose's settings (``--workers 2 --threads 4`` here, the 2-core value the
end-to-end tests use) and **two Celery worker processes** (``--concurrency 1``
each, one BLAS thread each: two workers on two cores, as two compose ``worker``
replicas would run), on PostgreSQL + Redis by default (a database and a Redis
database number of their own, dropped and flushed afterwards), or with
``--backend sqlite`` on the embedded defaults (SQLite database, Kombu's
SQLAlchemy transport).

1. Prepare: an API key for tenant ``load`` (``flask --app service keys create``,
   sent as ``Authorization: Bearer``; a service without that command gets none), a
   dataset (2,000 rows, 12 numeric features, 3 classes), a model trained through
   the workers, and two jobs of the load's kind run at once with the API idle:
   their run time is the baseline of the run time under load.
2. Baseline: ``--baseline-seconds`` (10) of /predict alone with the same wrk
   settings, the workers idle.
3. Load, for ``--duration`` (60) seconds, from two clients outside the stack:
   wrk (``--users`` connections, 32; its Lua script counts every status) POSTs
   one-row predicts as fast as the service answers, while a thread of this
   script POSTs a training job every ``--job-interval`` (1.0) seconds: each job
   trains for ``--job-epochs`` (300) epochs, 2-3 s alone, so jobs arrive faster
   than two workers finish them and the queue fills, then drains after the load
   stops.
4. Drain: wait up to ``--drain-timeout`` (300) seconds for every submitted job
   to be terminal.

Errors: any answer that is not 2xx/3xx, and any socket error or timeout (wrk's
``--timeout``, 5 s), counts, except 429 (the tenant's limit of jobs queued or
running, TENANT_MAX_CONCURRENT_JOBS, answering as designed), which is counted
and reported on its own line. The test sets that limit to
``--tenant-job-limit`` (1000) so that the queue can fill; ``0`` keeps the
service's default (8), and most submissions are then 429s. A job that
ends ``failed`` counts as an error too. Exit status 1 when there is any error or
any job is not terminal at the end of the drain; 0 otherwise.

Run: ``.venv/bin/python benchmarks/load.py --duration 60 [--backend sqlite] [--no-readme]``
(needs ``wrk``: ``apt-get install wrk``). About 3 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import _servers  # noqa: E402
from benchmarks._report import append_row, machine  # noqa: E402
from benchmarks._servers import BIN, api_server, backends, create_api_key, servers_reachable, service_env  # noqa: E402
from service.client import TERMINAL  # noqa: E402

SECTION = "Load (benchmarks/load.py)"
FEATURES = 12
NETWORK = {"layers": [{"type": "dense", "units": 64, "activation": "relu"}, {"type": "dense", "units": 3}]}
API_WORKERS = 2
WORKERS = 2

# Counts every status per wrk thread (response() runs for each answer), then sums the
# threads and prints one JSON line with wrk's own error counts and latency percentiles.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts") or {}) do statuses[status] = (statuses[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(statuses) do parts[#parts + 1] = string.format('"%%d": %%d', status, n) end
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "p50_us": %%d, "p95_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"statuses": {%%s}}\\n', summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    table.concat(parts, ", ")))
end
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (default 60)")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres",
                        help="postgres: PostgreSQL + Redis (default); sqlite: the embedded mode")
    parser.add_argument("--users", type=int, default=32, help="concurrent /predict connections (default 32)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--job-interval", type=float, default=1.0, help="seconds between job submissions")
    parser.add_argument("--job-epochs", type=int, default=300, help="epochs of each submitted job")
    parser.add_argument("--baseline-seconds", type=int, default=10, help="/predict alone before the load")
    parser.add_argument("--drain-timeout", type=float, default=300, help="seconds to wait for the jobs after")
    parser.add_argument("--tenant-job-limit", type=int, default=1000,
                        help="TENANT_MAX_CONCURRENT_JOBS of the stack (default 1000, so that the queue fills; "
                             "0 keeps the service's default, whose 429s are then counted apart)")
    parser.add_argument("--no-readme", action="store_true")
    return parser.parse_args()


# --- the stack ----------------------------------------------------------------------------------


@contextmanager
def celery_workers(data_dir: str, database_url: str | None, broker_url: str | None,
                   count: int) -> Iterator[list[subprocess.Popen]]:
    """Start `count` worker processes (concurrency 1, node names of their own, one BLAS thread each)."""
    # cores / worker processes: the default (cores // concurrency) would give each of them every core.
    threads = str(max(1, (os.cpu_count() or 1) // count))
    env = service_env(data_dir, database_url, broker_url, OMP_NUM_THREADS=threads,
                      OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    procs: list[subprocess.Popen] = []
    with ExitStack() as stack:
        for n in range(1, count + 1):
            argv = [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "cpu", "--concurrency", "1",
                    "--hostname", f"load{n}-{os.getpid()}@%h", "--loglevel", "WARNING"]
            out = stack.enter_context(open(Path(data_dir) / f"worker-{n}.log", "ab"))
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs.append(proc)
            stack.callback(_servers._stop, proc, 20)
        yield procs


# --- data and jobs ------------------------------------------------------------------------------


def dataset_csv(rows: int = 2000, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A 12-feature, 3-class table as CSV, and its feature rows (as /predict will send them)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES)).round(4)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    header = ",".join(f"x{i}" for i in range(FEATURES)) + ",label\n"
    text = header + "\n".join(",".join(f"{v:.4f}" for v in row) + f",{label}" for row, label in zip(X, y))
    return text.encode(), X


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def check(response: requests.Response, *expected: int) -> Any:
    if response.status_code not in expected:
        raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code} {response.text[:500]}")
    return response.json()


def job_body(dataset_id: str, epochs: int, seed: int) -> dict[str, Any]:
    # No early stopping, so that every job trains its epochs: the same work each time.
    return {"dataset_id": dataset_id, "network": NETWORK,
            "training": {"epochs": epochs, "batch_size": 32, "early_stopping_patience": 0, "seed": seed}}


def all_jobs(session: requests.Session, base: str) -> dict[str, dict[str, Any]]:
    """Return every job of the tenant by id (GET /v1/jobs, page by page)."""
    jobs: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        listing = check(session.get(f"{base}/v1/jobs", params=params, timeout=30), 200)
        jobs.update((job["id"], job) for job in listing["items"])
        cursor = listing.get("next_cursor")
        if not cursor:
            return jobs


def wait_jobs(session: requests.Session, base: str, ids: list[str], timeout: float,
              poll_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """Poll until every job of `ids` is terminal or `timeout` passes; return the last view of each.

    One list request a round rather than one GET per job: on 2 cores, polling
    sixty jobs a second would take CPU from the workers that drain them.
    """
    deadline = time.monotonic() + timeout
    while True:
        listed = all_jobs(session, base)
        missing = [job_id for job_id in ids if job_id not in listed]
        if missing:
            raise RuntimeError(f"{len(missing)} submitted jobs are not in GET /v1/jobs, e.g. {missing[0]}")
        jobs = {job_id: listed[job_id] for job_id in ids}
        if all(job["status"] in TERMINAL for job in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(poll_s)


class JobSubmitter(threading.Thread):
    """POST a job every `interval` seconds until stopped; record each answer."""

    def __init__(self, base: str, headers: dict[str, str], dataset_id: str, epochs: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.base, self.headers, self.dataset_id = base, headers, dataset_id
        self.epochs, self.interval = epochs, interval
        self.stop = threading.Event()
        self.job_ids: list[str] = []
        self.statuses: dict[str, int] = {}  # "202", "429", "error: ConnectionError", ...
        self.latencies_ms: list[float] = []

    def run(self) -> None:
        with requests.Session() as session:
            session.headers.update(self.headers)
            started = time.monotonic()
            n = 0
            while not self.stop.is_set():
                sent = time.perf_counter()
                try:
                    response = session.post(f"{self.base}/v1/jobs", json=job_body(self.dataset_id, self.epochs, n),
                                            timeout=30)
                    key = str(response.status_code)
                    if response.status_code == 202:
                        self.job_ids.append(response.json()["id"])
                except requests.RequestException as exc:
                    key = f"error: {type(exc).__name__}"
                self.latencies_ms.append((time.perf_counter() - sent) * 1e3)
                self.statuses[key] = self.statuses.get(key, 0) + 1
                n += 1
                # Paced from the start, so a slow answer does not stretch the schedule.
                self.stop.wait(max(0.0, started + n * self.interval - time.monotonic()))


def run_wrk(url: str, body: str, key: str | None, threads: int, connections: int, seconds: int,
            workdir: Path) -> dict[str, Any]:
    """Run wrk POSTing `body` to `url`; return its JSON result line."""
    script = workdir / "load.lua"
    auth = f'wrk.headers["Authorization"] = {json.dumps("Bearer " + key)}' if key else ""
    script.write_text(WRK_SCRIPT % {"body": json.dumps(body), "auth": auth})
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    line = next((line for line in out.splitlines() if line.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result = json.loads(line.removeprefix("WRK_RESULT "))
    statuses = {int(status): n for status, n in result["statuses"].items()}
    result["ok"] = sum(n for status, n in statuses.items() if 200 <= status < 400)
    result["429"] = statuses.get(429, 0)
    result["bad_status"] = sum(n for status, n in statuses.items() if status >= 400 and status != 429)
    result["socket_errors"] = result["connect"] + result["read"] + result["write"] + result["timeout"]
    result["errors"] = result["bad_status"] + result["socket_errors"]
    result["ok_per_s"] = result["ok"] / (result["duration_us"] / 1e6)
    result["statuses"] = statuses
    return result


# --- figures ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def peak_queue(jobs: list[dict[str, Any]]) -> int:
    """The most jobs queued (created, not started) at once, from the jobs' own timestamps."""
    events = []
    for job in jobs:
        events.append((stamp(job["created_at"]), 1))
        left = job["started_at"] or job["finished_at"]
        if left:
            events.append((stamp(left), -1))
    depth = peak = 0
    for _moment, change in sorted(events):
        depth += change
        peak = max(peak, depth)
    return peak


def wrk_line(name: str, result: dict[str, Any]) -> str:
    return (f"{name}: {result['requests']:,} requests, {result['ok_per_s']:,.0f} ok/s, "
            f"p50 {result['p50_us'] / 1e3:.2f} ms, p95 {result['p95_us'] / 1e3:.2f} ms, "
            f"p99 {result['p99_us'] / 1e3:.2f} ms, max {result['max_us'] / 1e3:.0f} ms; statuses {result['statuses']}, "
            f"socket errors {result['socket_errors']} (timeouts {result['timeout']})")


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks/load.py: skipped: wrk is not installed (apt-get install wrk)")
        return 0
    if args.backend == "postgres" and not servers_reachable():
        print("benchmarks/load.py: skipped: PostgreSQL or Redis is not reachable at 127.0.0.1 "
              "(--backend sqlite runs the embedded mode)")
        return 0
    before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    if args.tenant_job_limit > 0:
        # service_env starts from this process's environment: the API and the workers inherit it.
        os.environ["TENANT_MAX_CONCURRENT_JOBS"] = str(args.tenant_job_limit)
    with tempfile.TemporaryDirectory() as data_dir, ExitStack() as stack:
        workdir = Path(data_dir)
        database_url, broker_url = stack.enter_context(backends(args.backend != "sqlite", "backprop_load"))
        env = service_env(data_dir, database_url, broker_url)
        stack.enter_context(celery_workers(data_dir, database_url, broker_url, WORKERS))
        base = stack.enter_context(api_server(data_dir, API_WORKERS, database_url, broker_url))
        key = create_api_key(env, tenant="load")
        headers = {"Authorization": f"Bearer {key}"}
        print(f"stack: {args.backend}, gunicorn {API_WORKERS} workers x 4 threads at {base}, "
              f"{WORKERS} Celery worker processes; API key of tenant load")
        session = stack.enter_context(requests.Session())
        session.headers.update(headers)

        # 1. A dataset, a model, and two load jobs at once with the API idle.
        data, X = dataset_csv()
        dataset_id = check(session.post(f"{base}/v1/datasets", files={"file": ("load.csv", io.BytesIO(data),
                                                                               "text/csv")}), 201)["id"]
        first = check(session.post(f"{base}/v1/jobs", json=job_body(dataset_id, 5, 0)), 202)["id"]
        trained = wait_jobs(session, base, [first], 120)[first]
        if trained["status"] != "succeeded":
            raise RuntimeError(f"the model's job ended {trained['status']}: {trained.get('error')}")
        model_id = trained["model_id"]
        pair = [check(session.post(f"{base}/v1/jobs", json=job_body(dataset_id, args.job_epochs, s)), 202)["id"]
                for s in (1, 2)]
        alone = list(wait_jobs(session, base, pair, 300).values())
        if any(job["status"] != "succeeded" for job in alone):
            raise RuntimeError(f"a baseline job did not succeed: {alone}")
        alone_run = [stamp(job["finished_at"]) - stamp(job["started_at"]) for job in alone]
        overlap = (min(stamp(job["finished_at"]) for job in alone) - max(stamp(job["started_at"]) for job in alone))
        print(f"two {args.job_epochs}-epoch jobs at once, API idle: run {alone_run[0]:.2f} s and {alone_run[1]:.2f} s"
              + ("" if overlap > 0 else " (they did not overlap: is the second worker up?)"))

        # 2. /predict alone.
        url = f"{base}/v1/models/{model_id}/predict"
        body = json.dumps({"inputs": [X[0].tolist()]})
        run_wrk(url, body, key, 1, API_WORKERS * 2, 1, workdir)  # warm every API worker's model cache
        baseline = run_wrk(url, body, key, args.wrk_threads, args.users, args.baseline_seconds, workdir)
        print(wrk_line(f"/predict alone, {args.baseline_seconds} s", baseline))

        # 3. The load: wrk on /predict, and a job every interval.
        submitter = JobSubmitter(base, headers, dataset_id, args.job_epochs, args.job_interval)
        submitter.start()
        loaded = run_wrk(url, body, key, args.wrk_threads, args.users, args.duration, workdir)
        stopped = time.time()
        submitter.stop.set()
        submitter.join(60)
        limit = f"job limit {args.tenant_job_limit}" if args.tenant_job_limit > 0 else "default job limit"
        where = machine(f"load before the run {before}; {args.backend}, gunicorn {API_WORKERS}x4 threads, "
                        f"{WORKERS} Celery worker processes, wrk {args.wrk_threads} threads {args.users} "
                        f"connections, tenant {limit}")
        print(wrk_line(f"/predict under load, {args.duration} s", loaded))
        print(f"POST /v1/jobs: {submitter.statuses}, median {statistics.median(submitter.latencies_ms):.1f} ms, "
              f"p99 {percentile(submitter.latencies_ms, 99):.1f} ms")

        # 4. The drain.
        jobs = wait_jobs(session, base, submitter.job_ids, args.drain_timeout)
        drained = time.time() - stopped

    views = list(jobs.values())
    count = {status: sum(job["status"] == status for job in views) for status in TERMINAL}
    not_terminal = len(views) - sum(count.values())
    done = [job for job in views if job["started_at"] and job["finished_at"]]
    waits = [stamp(job["started_at"]) - stamp(job["created_at"]) for job in done]
    runs = [stamp(job["finished_at"]) - stamp(job["started_at"]) for job in done]
    # Run time while wrk was running, and once it had stopped (the drain), apart: the first
    # is what training gets on a machine also serving /predict.
    runs_during = [stamp(job["finished_at"]) - stamp(job["started_at"]) for job in done
                   if stamp(job["finished_at"]) <= stopped]
    runs_after = [stamp(job["finished_at"]) - stamp(job["started_at"]) for job in done
                  if stamp(job["started_at"]) >= stopped]
    alone_s = statistics.mean(alone_run)
    last_finished = max((stamp(job["finished_at"]) for job in views if job["finished_at"]), default=stopped)
    drain_s = max(0.0, last_finished - stopped) if not_terminal == 0 else drained
    submit_429 = submitter.statuses.get("429", 0)
    submit_errors = sum(n for status, n in submitter.statuses.items() if status not in ("202", "429"))
    errors = loaded["errors"] + submit_errors + count["failed"]
    too_many = loaded["429"] + submit_429

    print(f"jobs: {len(views)} submitted, {count['succeeded']} succeeded, {count['failed']} failed, "
          f"{count['cancelled']} cancelled, {not_terminal} not terminal; peak queue {peak_queue(views)}; "
          f"last one finished {drain_s:.1f} s after the load stopped")
    if done:
        print(f"job queue wait: median {statistics.median(waits):.1f} s, p95 {percentile(waits, 95):.1f} s, "
              f"max {max(waits):.1f} s; run time: median {median(runs):.2f} s, max {max(runs):.2f} s; "
              f"{len(runs_during)} jobs finished during the load, median run {median(runs_during):.2f} s; "
              f"{len(runs_after)} started after it, median run {median(runs_after):.2f} s "
              f"(alone, two at once: {alone_s:.2f} s)")
    for job in views:
        if job["status"] == "failed":
            print(f"  job {job['id']} failed: {job.get('error')}")
    print(f"errors: {errors} (predict: {loaded['bad_status']} bad statuses, {loaded['socket_errors']} socket "
          f"errors; job submission: {submit_errors}; failed jobs: {count['failed']}); 429 answers: {too_many}")

    if not args.no_readme:
        mode = "PostgreSQL+Redis" if args.backend == "postgres" else "SQLite"

        def row(figure: str, value: str, baseline_name: str = "", baseline_value: str = "",
                ratio: float | None = None, target: str = "") -> None:
            append_row(SECTION, f"{mode}, {args.duration} s: {figure}", value, baseline_name, baseline_value,
                       ratio, target, where)

        alone_name = f"/predict alone, {args.baseline_seconds} s"
        row(f"/predict 2xx req/s ({loaded['requests']:,} requests)", f"{loaded['ok_per_s']:,.0f}", alone_name,
            f"{baseline['ok_per_s']:,.0f}", loaded["ok_per_s"] / baseline["ok_per_s"])
        for q in ("p50", "p95", "p99"):
            under, idle = loaded[f"{q}_us"] / 1e3, baseline[f"{q}_us"] / 1e3
            row(f"/predict {q} ms", f"{under:.2f}", alone_name, f"{idle:.2f}", under / idle)
        row("errors (non-2xx/3xx but 429, socket errors, failed jobs)", str(errors), "target", "0", None, "0")
        row("429 answers (tenant limits; not errors)", str(too_many))
        row("jobs submitted / succeeded / failed / cancelled / not terminal",
            f"{len(views)} / {count['succeeded']} / {count['failed']} / {count['cancelled']} / {not_terminal}",
            target="0 not terminal")
        if done:
            row(f"job queue wait median / p95 / max s (peak queue {peak_queue(views)}, last job done "
                f"{drain_s:.0f} s after the load)",
                f"{statistics.median(waits):.1f} / {percentile(waits, 95):.1f} / {max(waits):.1f}")
            row(f"job run time median s ({args.job_epochs} epochs), {len(runs_during)} jobs done during the load",
                f"{median(runs_during):.2f}", "2 jobs at once, API idle", f"{alone_s:.2f}",
                median(runs_during) / alone_s if runs_during else None)
            row(f"job run time median s, {len(runs_after)} jobs started after the load", f"{median(runs_after):.2f}",
                "2 jobs at once, API idle", f"{alone_s:.2f}", median(runs_after) / alone_s if runs_after else None)
        row("POST /v1/jobs median / p99 ms",
            f"{statistics.median(submitter.latencies_ms):.1f} / {percentile(submitter.latencies_ms, 99):.1f}")

    ok = errors == 0 and not_terminal == 0
    print("PASS" if ok else "FAIL: " + ("errors" if errors else "") + (" and " if errors and not_terminal else "")
          + (f"{not_terminal} jobs not terminal" if not_terminal else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())

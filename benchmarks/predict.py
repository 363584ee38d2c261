"""/predict as users feel it: one-row latency and throughput under gunicorn, and 10,000-row batches.

The service's API runs under gunicorn with compose's settings (``--threads 4``)
on SQLite in a temporary DATA_DIR, with a model (12 numeric features, 64 relu
units, 3 classes) trained in this process first. Its peer is a bare Flask
endpoint under the same gunicorn settings that reads the JSON body and answers
the same JSON shape without a model (benchmarks/_bare_app.py). Load comes from
wrk (Debian package ``wrk``), a separate process.

- one client (wrk -t1 -c1): median and p99 latency of a one-row predict;
  targets median <= 1 ms, p99 <= 5 ms;
- two gunicorn workers, four connections (wrk -t2 -c4): requests/s of the
  service against the bare endpoint; target >= 0.85x. Both servers are up
  together and ``--runs`` (3) runs of each alternate; the medians are compared.
  Four keep-alive connections are shared out between the two workers by
  whichever accepts first, and about one run in two gives all four to one
  worker (half the rate, for either server): one run per side decided the
  ratio by that draw rather than by the code;
- 10,000 rows in one request as JSON ``inputs`` and as ``text/csv``, answered in
  JSON or CSV: the server's time (the service's own timing of each request, from
  its latency histogram at /metrics: view and serialisation included) and the median round
  trip seen by the client; target <= 100 ms server-side.

Run: ``python benchmarks/predict.py [--seconds S] [--runs N] [--no-readme]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._report import append_row, machine, print_ratio  # noqa: E402
from benchmarks._servers import api_server, auth_headers, gunicorn, service_env  # noqa: E402
from service.api.models import PredictFastLane  # noqa: E402

SECTION = "/predict (benchmarks/predict.py)"
FEATURES = 12


def train_model(data_dir: str) -> tuple[str, np.ndarray, str]:
    """Upload a dataset and train a small model in this process; return its id, sample rows and
    an API key of its tenant (the served API runs with AUTH on, as in production)."""
    import io
    import os

    os.environ["DATA_DIR"] = data_dir
    from service import create_app
    from service.core.tenancy.keys import create_key
    from workers.training import run_job

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, FEATURES))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    header = ",".join(f"x{i}" for i in range(FEATURES)) + ",label\n"
    text = header + "\n".join(",".join(f"{v:.4f}" for v in row) + f",{label}" for row, label in zip(X, y))

    class NoQueue:
        def publish(self, job_id: str, queue: str) -> None:
            pass

        def ping(self) -> None:
            pass

    app = create_app({"DATA_DIR": data_dir, "QUEUE": NoQueue(), "AUTH": "on"})
    with app.extensions["backprop.sessions"]() as session:
        key = create_key(session, "bench")[1]
        session.commit()
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    dataset = client.post("/v1/datasets", data={"file": (io.BytesIO(text.encode()), "d.csv")},
                          content_type="multipart/form-data").get_json()
    network = {"layers": [{"type": "dense", "units": 64, "activation": "relu"}, {"type": "dense", "units": 3}]}
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": network,
                                        "training": {"epochs": 3}}).get_json()
    run_job(job["id"], sessions=app.extensions["backprop.sessions"])
    model_id = client.get(f"/v1/jobs/{job['id']}").get_json()["model_id"]
    app.extensions["backprop.engine"].dispose()
    return model_id, X.round(4), key


def wrk(url: str, body: str, threads: int, connections: int, seconds: float, workdir: Path,
        key: str | None = None) -> dict[str, float]:
    """Run wrk POSTing `body` (with `Authorization: Bearer key`); return requests/s, median and p99 latency in ms."""
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n'
                      + (f'wrk.headers["Authorization"] = {json.dumps("Bearer " + key)}\n' if key else ""))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors from {url}:\n{out}")

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rate, "p50": latency("50%"), "p99": latency("99%")}


PREDICT_HISTOGRAM = re.compile(r'^backprop_http_request_duration_seconds_(sum|count)\{method="POST",'
                               rf'route="{re.escape(PredictFastLane.ROUTE)}"\}} (\S+)$', re.M)


def predict_histogram(session, base: str) -> tuple[float, float]:
    """Return (seconds, answers) of /predict so far in the answering process's latency histogram."""
    found = dict(PREDICT_HISTOGRAM.findall(session.get(f"{base}/metrics").text))
    return float(found.get("sum", 0.0)), float(found.get("count", 0.0))


def batch_times(base: str, model_id: str, rows: np.ndarray, key: str,
                repeats: int = 7) -> dict[str, tuple[float, float]]:
    """Return, for 10,000 rows as JSON and CSV bodies with JSON and CSV answers, (server ms, client ms).

    Both are medians: the server's of its own timing of each request (the latency
    histogram at /metrics of the one gunicorn worker, read before and after it), the
    client's of the round trip.
    """
    import requests

    url = f"{base}/v1/models/{model_id}/predict"
    json_body = json.dumps({"inputs": rows.tolist()})
    csv_body = (",".join(f"x{i}" for i in range(FEATURES)) + "\n"
                + "\n".join(",".join(f"{v:.4f}" for v in row) for row in rows) + "\n")
    cases = {"JSON in, JSON out": (json_body, "application/json", "application/json"),
             "CSV in, JSON out": (csv_body, "text/csv", "application/json"),
             "CSV in, CSV out": (csv_body, "text/csv", "text/csv"),
             "JSON in, CSV out": (json_body, "application/json", "text/csv")}
    results = {}
    with requests.Session() as session:
        session.headers.update(auth_headers(key))
        for name, (body, content_type, accept) in cases.items():
            server_ms, client_ms = [], []
            for _ in range(repeats + 1):  # the first is a warm-up
                before = predict_histogram(session, base)
                started = time.perf_counter()
                response = session.post(url, data=body, headers={"Content-Type": content_type, "Accept": accept})
                client_ms.append((time.perf_counter() - started) * 1e3)
                response.raise_for_status()
                seconds, answers = (a - b for a, b in zip(predict_histogram(session, base), before))
                assert answers == 1, f"the histogram counted {answers} answers, not 1"
                server_ms.append(seconds * 1e3)
            results[name] = (statistics.median(server_ms[1:]), statistics.median(client_ms[1:]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of each wrk run")
    parser.add_argument("--runs", type=int, default=3, help="alternated throughput runs of each server")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks/predict.py: skipped: wrk is not installed (apt-get install wrk)")
        return
    where = machine()
    bare_app = "benchmarks._bare_app:create_app()"
    with tempfile.TemporaryDirectory() as data_dir:
        workdir = Path(data_dir)
        model_id, X, key = train_model(data_dir)
        one_row = json.dumps({"inputs": [X[0].tolist()]})
        seconds = int(max(1, args.seconds))
        bare_env = service_env(data_dir)

        def warm(url: str) -> None:  # every worker's model cache, and both sides' code paths
            wrk(url, one_row, 1, 2, 1, workdir, key)

        with api_server(data_dir, workers=1) as base:
            url = f"{base}/v1/models/{model_id}/predict"
            warm(url)
            one = wrk(url, one_row, 1, 1, seconds, workdir, key)
            batches = batch_times(base, model_id, X[np.random.default_rng(1).integers(0, len(X), 10_000)], key)
        with gunicorn(bare_app, bare_env, 1) as base:
            warm(f"{base}/predict")  # with the same header, so both sides parse the same request
            bare_one = wrk(f"{base}/predict", one_row, 1, 1, seconds, workdir, key)
        rates: dict[str, list[float]] = {"service": [], "bare": []}
        with api_server(data_dir, workers=2) as service_base, gunicorn(bare_app, bare_env, 2) as bare_base:
            urls = {"service": f"{service_base}/v1/models/{model_id}/predict", "bare": f"{bare_base}/predict"}
            for url in urls.values():
                warm(url)
            for _ in range(args.runs):
                for side, url in urls.items():
                    rates[side].append(wrk(url, one_row, 2, 4, seconds, workdir, key)["rps"])

    print(f"one client: service median {one['p50']:.2f} ms, p99 {one['p99']:.2f} ms "
          f"(bare Flask: {bare_one['p50']:.2f} ms, {bare_one['p99']:.2f} ms)")
    for side, runs in rates.items():
        print(f"2 workers, 4 connections, {side}: " + ", ".join(f"{r:,.0f}" for r in runs) + " req/s")
    service_rps, bare_rps = statistics.median(rates["service"]), statistics.median(rates["bare"])
    ratio = print_ratio(f"2 workers, 4 connections, median of {args.runs} alternated runs: service", service_rps,
                        "bare Flask", bare_rps, "req/s")
    for name, (server_ms, client_ms) in batches.items():
        print(f"10,000 rows, {name}: {server_ms:.1f} ms in the server, {client_ms:.1f} ms round trip")
    if not args.no_readme:
        append_row(SECTION, "one row, 1 client, median ms", f"{one['p50']:.2f}", "bare Flask",
                   f"{bare_one['p50']:.2f}", one["p50"] / bare_one["p50"], "<= 1 ms", where)
        append_row(SECTION, "one row, 1 client, p99 ms", f"{one['p99']:.2f}", "bare Flask",
                   f"{bare_one['p99']:.2f}", one["p99"] / bare_one["p99"], "<= 5 ms", where)
        append_row(SECTION, f"one row, 2 workers x 4 conns, req/s, median of {args.runs} alternated runs",
                   f"{service_rps:,.0f}", "bare Flask", f"{bare_rps:,.0f}", ratio, ">= 0.85x", where)
        for name, (server_ms, client_ms) in batches.items():
            append_row(SECTION, f"10,000 rows, {name}, ms in the server (round trip {client_ms:.1f})",
                       f"{server_ms:.1f}", "target", "100", server_ms / 100, "<= 1x", where)


if __name__ == "__main__":
    main()

"""Peak memory of an API process scoring with a wide network: a 1,000,000-unit layer (7M parameters).

A forward pass holds every node's values for its rows, whatever the parameters: one row of
this network is ~4 MB of float32. Without chunks a 100-row predict held ~0.5 GB and a
100,000-row one asked for 373 GiB (a 500); with them a predict holds at most
MAX_ACTIVATION_FLOATS values, and a request past MAX_PREDICT_VALUES is a 413.

Each figure comes from a fresh child process, under an address-space limit (RLIMIT_AS, so
that a regression fails there rather than taking the machine): it makes the app on a SQLite
store that already holds the model, serves one POST /v1/models/ID/predict through the app's
WSGI stack (Flask's test client: no server process to share the measure), and reports the
status and its peak memory (VmHWM). The model is trained once, by the worker's code, in a
child process of its own.

Run: ``python benchmarks/wide_predict.py [--rows 100 100000] [--units 1000000] [--limit-gib 3]``.
tests/service/test_memory_budget.py uses the same children.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEATURES = ["a", "b", "c", "d"]
DEFAULT_UNITS = 1_000_000
DEFAULT_LIMIT_GIB = 3.0


class _NoQueue:
    """The job is run in the same process: nothing to publish."""

    def publish(self, job_id: str, queue: str) -> None:
        pass

    def ping(self) -> None:
        pass


def _app(data_dir: Path, settings: dict[str, Any]) -> Any:
    from service import create_app

    return create_app({"TESTING": True, "DATA_DIR": str(data_dir), "AUTH": "off", "QUEUE": _NoQueue(),
                       "DATABASE_URL": f"sqlite:///{data_dir / 'backprop.db'}", **settings})


def _make(data_dir: Path, units: int) -> dict[str, Any]:
    """Upload 40 rows, train a network with a `units`-wide hidden layer for one epoch; return its model id."""
    import io

    import numpy as np

    from workers.training import run_job

    rng = np.random.default_rng(0)
    rows = "\n".join(",".join(f"{v:.3f}" for v in rng.normal(size=4)) + f",{i % 2}" for i in range(40))
    app = _app(data_dir, {"UPGRADE_ON_START": True})
    client = app.test_client()
    dataset = client.post("/v1/datasets", content_type="multipart/form-data", data={
        "file": (io.BytesIO(f"{','.join(FEATURES)},label\n{rows}\n".encode()), "wide.csv")}).get_json()
    network = {"layers": [{"type": "dense", "units": units, "activation": "relu"}, {"type": "dense", "units": 2}]}
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "network": network,
                                        "training": {"epochs": 1, "batch_size": 8}}).get_json()
    status = run_job(job["id"], sessions=app.extensions["backprop.sessions"], owner="benchmark")
    model_id = client.get(f"/v1/jobs/{job['id']}").get_json()["model_id"]
    return {"status": status, "model_id": model_id, "peak_mib": _peak_mib()}


def _serve(data_dir: Path, model_id: str, rows: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Serve one predict of `rows` rows; return its status, the start of its body and the peak memory."""
    import numpy as np

    app = _app(data_dir, {"UPGRADE_ON_START": False, **settings})
    client = app.test_client()
    inputs = np.round(np.random.default_rng(1).normal(size=(rows, len(FEATURES))), 3).tolist()
    before = _peak_mib()
    response = client.post(f"/v1/models/{model_id}/predict", json={"inputs": inputs})
    body = response.get_json()
    answer = {"status": response.status_code, "peak_before_mib": before, "peak_mib": _peak_mib()}
    if response.status_code == 200:
        answer["predictions"] = len(body["predictions"])
    else:
        answer["problem"] = body
    return answer


def _peak_mib() -> float:
    """This process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(arguments: list[str], limit_gib: float = DEFAULT_LIMIT_GIB, timeout_s: float = 600) -> dict[str, Any]:
    """Run this script as a child (``--child ...``) under RLIMIT_AS of `limit_gib`; return what it printed.

    The child runs the checkout this script is in (a copy in an older checkout measures "before").
    """
    limit = int(limit_gib * (1 << 30))

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "LOG_LEVEL": "ERROR"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *arguments],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
                          preexec_fn=limit_address_space, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child {arguments} exited {done.returncode}: {done.stderr[-3000:]}")
    return json.loads(lines[-1])


def make_model(data_dir: Path, units: int = DEFAULT_UNITS, limit_gib: float = DEFAULT_LIMIT_GIB) -> str:
    """Train the wide model into `data_dir`'s SQLite store (in a child); return its id."""
    made = run_child(["make", str(data_dir), str(units)], limit_gib)
    if made["status"] != "succeeded":
        raise RuntimeError(f"the wide model's job ended {made['status']}")
    return str(made["model_id"])


def serve_predict(data_dir: Path, model_id: str, rows: int, settings: dict[str, Any] | None = None,
                  limit_gib: float = DEFAULT_LIMIT_GIB) -> dict[str, Any]:
    """Serve one predict of `rows` rows in a fresh child under RLIMIT_AS; return status and peak memory."""
    return run_child(["serve", str(data_dir), model_id, str(rows), json.dumps(settings or {})], limit_gib)


def _child(arguments: list[str]) -> None:
    command, data_dir = arguments[0], Path(arguments[1])
    if command == "make":
        print(json.dumps(_make(data_dir, int(arguments[2]))))
    else:
        print(json.dumps(_serve(data_dir, arguments[2], int(arguments[3]), json.loads(arguments[4]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 100_000])
    parser.add_argument("--units", type=int, default=DEFAULT_UNITS)
    parser.add_argument("--limit-gib", type=float, default=DEFAULT_LIMIT_GIB)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        model_id = make_model(data_dir, options.units, options.limit_gib)
        for rows in options.rows:
            answer = serve_predict(data_dir, model_id, rows, limit_gib=options.limit_gib)
            detail = answer.get("problem", {}).get("detail", "")
            print(f"{rows:>7,} rows: {answer['status']}, peak {answer['peak_mib']:.0f} MiB "
                  f"(before the request {answer['peak_before_mib']:.0f} MiB) {detail[:160]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
    else:
        main()

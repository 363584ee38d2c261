"""`make run`'s launcher: API and worker on SQLite, a killed worker replaced, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from service.client import Client
from service.core.settings import setting_default
from tests.e2e.conftest import ROOT, STACK_VARIABLES, free_port, write_csv
from tests.faults.conftest import job_body
from tests.helpers import mlp, wait_for

LAUNCHER = ROOT / "scripts" / "run_embedded.py"

pytestmark = pytest.mark.slow


class Launcher:
    """scripts/run_embedded.py running as `make run` runs it, with its output in a file."""

    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.base_url)  # embedded mode: AUTH off, no key
        self.log = workdir / "run.log"
        env = {key: value for key, value in os.environ.items() if key not in STACK_VARIABLES}
        env.update(PORT=str(self.port), DATA_DIR=str(workdir / "var"), WORKER_GRACE_S="3", PYTHONUNBUFFERED="1")
        env.update(extra_env or {})
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(LAUNCHER), *(args or [])], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> dict[str, int]:
        """The latest process of each name the launcher started."""
        return {name: int(pid) for name, pid in re.findall(r"\[run\] (\w+) \(pid (\d+)\)", self.output())}

    def every_child_pid(self) -> list[int]:
        """Every process the launcher started, replaced workers included."""
        return [int(pid) for pid in re.findall(r"\[run\] \w+ \(pid (\d+)\)", self.output())]

    def wait_healthy(self, timeout: float = 90) -> None:
        def serving() -> bool:
            assert self.proc.poll() is None, f"the launcher exited {self.proc.returncode}\n{self.output()}"
            return "serving on" in self.output()

        wait_for(serving, timeout, 0.2, lambda: f"serving\n{self.output()}")

    def api(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = requests.request(method, self.base_url + path, timeout=30, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:1000]}"
        return response.json()

    def wait_running(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            job = self.client.get_job(job_id)
            return job if job["status"] == "running" else None

        return wait_for(running, timeout, 0.2, lambda: f"job {job_id} running\n{self.output()}")


def _gone(pid: int) -> bool:
    """Say whether no living process is left in the process group that pid led (zombies are dead)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, group = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue  # it ended meanwhile
        if int(group) == pid and state != "Z":
            return False
    return True


@pytest.fixture
def start_launcher(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    """Return a function that starts a Launcher (Launcher's arguments but the directory); kill them all after."""
    started: list[Launcher] = []

    def start(extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> Launcher:
        workdir = tmp_path / f"launcher-{len(started) + 1}"
        workdir.mkdir()
        started.append(Launcher(workdir, extra_env, args))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:  # stopped as Ctrl-C stops it, so it cleans up after itself
            running.proc.send_signal(signal.SIGINT)
            try:
                running.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid in [running.proc.pid, *running.every_child_pid()]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        running.proc.wait(timeout=10)


@pytest.fixture
def launcher(start_launcher: Callable[..., Launcher]) -> Launcher:
    return start_launcher()


def test_trains_then_ctrl_c_during_a_job_stops_api_and_worker(launcher: Launcher) -> None:
    launcher.wait_healthy()
    # Embedded mode: no keys, said at start-up, on the loopback interface only.
    output = launcher.output()
    assert "AUTH=off: requests are not authenticated; every resource belongs to tenant 'default'" in output
    assert f"listening on 127.0.0.1:{launcher.port} " in output
    assert re.search(r"gunicorn --bind unix:\S+ ", output), output  # the API itself: no TCP port at all
    with (ROOT / "examples" / "iris.csv").open("rb") as csv:
        dataset = launcher.api("POST", "/v1/datasets", 201, files={"file": ("iris.csv", csv)},
                               data={"target": "species"})
    network = mlp(outputs=3)
    quick = launcher.api("POST", "/v1/jobs", 202, json={"dataset_id": dataset["id"], "network": network,
                                                         "training": {"epochs": 5}})
    assert launcher.client.wait_job(quick["id"], poll_s=0.2, timeout=120)["status"] == "succeeded"
    endless = launcher.api("POST", "/v1/jobs", 202, json={
        "dataset_id": dataset["id"], "network": network,
        "training": {"epochs": 100000, "early_stopping_patience": 0}})
    launcher.wait_running(endless["id"])
    children = launcher.child_pids()
    assert set(children) == {"api", "worker"}, launcher.output()

    started = time.monotonic()
    launcher.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    try:
        launcher.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the launcher did not stop within 30s of SIGINT\n{launcher.output()}")

    assert time.monotonic() - started < 3 + 5 + 5, "stopping took longer than grace + cold shutdown"
    for name, pid in children.items():
        assert _gone(pid), f"{name} (pid {pid}) or one of its children outlived the launcher\n{launcher.output()}"


RESUMED = re.compile(r"attempt 2 resumes from its epoch (\d+) checkpoint")


def _blobs_csv(path: Path) -> Path:
    """Three Gaussian classes over 16 features, 2,400 rows (tests/faults' data: a few seconds of training)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=2400)
    features = rng.normal(size=(2400, 16)) + labels[:, None] * 0.8
    rows = ([*np.round(x, 4), int(label)] for x, label in zip(features, labels, strict=True))
    return write_csv(path, [f"f{i}" for i in range(16)] + ["label"], rows)


def _healthy(launcher: Launcher) -> bool:
    return requests.get(launcher.base_url + "/healthz", timeout=10).status_code == 200


def test_a_worker_killed_mid_job_is_replaced_the_api_stays_up_and_the_job_resumes(
        start_launcher: Callable[..., Launcher], tmp_path: Path) -> None:
    # A checkpoint after every epoch, as tests/faults runs; the lease and reaper keep their defaults.
    launcher = start_launcher({"CHECKPOINT_INTERVAL_S": "0"})
    launcher.wait_healthy()
    with _blobs_csv(tmp_path / "blobs.csv").open("rb") as csv:
        dataset = launcher.api("POST", "/v1/datasets", 201, files={"file": ("blobs.csv", csv)},
                               data={"target": "label", "task": "classification"})
    job_id = launcher.api("POST", "/v1/jobs", 202, json={**job_body(dataset["id"], epochs=30)})["id"]

    def past_epoch_3() -> bool:
        job = launcher.client.get_job(job_id)
        assert job["status"] in ("queued", "running"), job
        return job["status"] == "running" and job["progress"]["epoch"] >= 3

    wait_for(past_epoch_3, 120, 0.1, lambda: f"job {job_id} past epoch 3\n{launcher.output()}")
    first_worker = launcher.child_pids()["worker"]
    os.killpg(first_worker, signal.SIGKILL)  # as the OOM killer would: main process and pool, no hand-back
    killed_at = time.monotonic()

    def replaced() -> int | None:
        assert launcher.proc.poll() is None, f"the launcher exited {launcher.proc.returncode}\n{launcher.output()}"
        worker = launcher.child_pids()["worker"]
        return worker if worker != first_worker else None

    second_worker = wait_for(replaced, 60, 0.2, lambda: f"a new worker\n{launcher.output()}")
    assert _gone(first_worker), "the killed worker's pool outlived it"
    assert _healthy(launcher), launcher.output()
    assert launcher.api("GET", f"/v1/jobs/{job_id}", 200)["id"] == job_id  # the API answers /v1 too

    def taken_over() -> bool:
        job = launcher.client.get_job(job_id)
        return job["attempt"] == 2 and job["status"] in ("running", "succeeded")

    wait_for(taken_over, 240, 0.2, lambda: f"job {job_id} on its second attempt\n{launcher.output()}")
    # The launcher knew its worker died: the job did not wait for its lease to run out.
    assert time.monotonic() - killed_at < setting_default("LEASE_TIMEOUT_S"), launcher.output()
    job = launcher.client.wait_job(job_id, poll_s=0.5, timeout=240)
    assert job["status"] == "succeeded" and job["attempt"] == 2, (job, launcher.output())
    assert job["progress"]["epoch"] == 30
    # Resumed from its checkpoint (not from epoch 0), by the new worker, as on a second host.
    resumed = [int(epoch) for epoch in RESUMED.findall(launcher.output())]
    assert resumed and resumed[0] >= 3, launcher.output()
    epochs = launcher.api("GET", f"/v1/jobs/{job_id}/metrics", 200)["epochs"]
    assert [record["epoch"] for record in epochs] == list(range(1, 31))
    assert launcher.proc.poll() is None and launcher.child_pids()["worker"] == second_worker


def test_a_worker_that_keeps_crashing_at_start_makes_the_launcher_give_up_loudly(
        start_launcher: Callable[..., Launcher]) -> None:
    crashing = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    launcher = start_launcher(args=["--worker-command", crashing])
    launcher.wait_healthy()
    # The API stays up while the worker is being brought back.
    assert _healthy(launcher), launcher.output()
    try:
        returncode = launcher.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the launcher did not give up within 120 s\n{launcher.output()}")

    output = launcher.output()
    assert returncode != 0, output
    assert re.search(r"\[run\] the worker exited 5 times in a row within \d+ s of starting; giving up", output), output
    assert len(re.findall(r"\[run\] worker \(pid \d+\)", output)) == 5, output
    # With a backoff between the tries: 1, 2, 4 and 8 s.
    assert re.search(r"starting it again in 8 s", output), output
    for pid in launcher.every_child_pid():
        assert _gone(pid), f"pid {pid} outlived the launcher\n{output}"

"""`make run`'s launcher: API and worker on SQLite, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import ROOT, STACK_VARIABLES, free_port

LAUNCHER = ROOT / "scripts" / "run_embedded.py"

pytestmark = pytest.mark.slow


class Launcher:
    """scripts/run_embedded.py running as `make run` runs it, with its output in a file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "run.log"
        env = {key: value for key, value in os.environ.items() if key not in STACK_VARIABLES}
        env.update(PORT=str(self.port), DATA_DIR=str(workdir / "var"), WORKER_GRACE_S="3", PYTHONUNBUFFERED="1")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, str(LAUNCHER)], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in re.findall(r"\[run\] (\w+) \(pid (\d+)\)", self.output())}

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the launcher exited {self.proc.returncode}\n{self.output()}"
            if "serving on" in self.output():
                return
            time.sleep(0.2)
        pytest.fail(f"not serving after {timeout}s\n{self.output()}")

    def api(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = requests.request(method, self.base_url + path, timeout=30, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:1000]}"
        return response.json()

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api("GET", f"/v1/jobs/{job_id}", 200)
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        pytest.fail(f"job {job_id} not {statuses} after {timeout}s: {job}\n{self.output()}")


def _gone(pid: int) -> bool:
    """Say whether no process is left in the process group that pid led."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    running = Launcher(tmp_path)
    try:
        yield running
    finally:
        for pid in [running.proc.pid, *running.child_pids().values()]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        running.proc.wait(timeout=10)


def test_trains_then_ctrl_c_during_a_job_stops_api_and_worker(launcher: Launcher) -> None:
    launcher.wait_healthy()
    # Embedded mode: no keys, said at start-up, on the loopback interface only.
    output = launcher.output()
    assert "AUTH=off: requests are not authenticated; every resource belongs to tenant 'default'" in output
    assert f"--bind 127.0.0.1:{launcher.port} " in output
    with (ROOT / "examples" / "iris.csv").open("rb") as csv:
        dataset = launcher.api("POST", "/v1/datasets", 201, files={"file": ("iris.csv", csv)},
                               data={"target": "species"})
    network = {"layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}]}
    quick = launcher.api("POST", "/v1/jobs", 202, json={"dataset_id": dataset["id"], "network": network,
                                                         "training": {"epochs": 5}})
    assert launcher.wait_status(quick["id"], ("succeeded", "failed"))["status"] == "succeeded"
    endless = launcher.api("POST", "/v1/jobs", 202, json={
        "dataset_id": dataset["id"], "network": network,
        "training": {"epochs": 100000, "early_stopping_patience": 0}})
    launcher.wait_status(endless["id"], ("running",))
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

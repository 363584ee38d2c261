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

from service.client import Client
from tests.e2e.conftest import ROOT, STACK_VARIABLES, free_port
from tests.helpers import mlp, wait_for

LAUNCHER = ROOT / "scripts" / "run_embedded.py"

pytestmark = pytest.mark.slow


class Launcher:
    """scripts/run_embedded.py running as `make run` runs it, with its output in a file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.base_url)  # embedded mode: AUTH off, no key
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

"""Fault tests: real API and Celery worker processes (tests/e2e's harness) that the tests break.

`faulty` starts the API and any number of workers, on short recovery settings
(a 5 s lease, a reaper every second), on one backend:

- `sqlite`: the embedded mode (SQLite database, Kombu's SQLAlchemy transport);
- `postgres`: a fresh PostgreSQL database and a redis-server of the test's own
  on a free port (never the machine's shared 6379), so it can be restarted and
  flushed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from service.client import TERMINAL
from tests.conftest import skip_or_fail
from tests.e2e.conftest import (
    BIN,
    ROOT,
    STACK_VARIABLES,
    Stack,
    _postgres_database,
    _signal_group,
    compose_command,
    free_port,
    write_csv,
)
from tests.helpers import mlp, wait_for

# Short enough that the whole fault suite runs in a few minutes on 2 cores.
RECOVERY_ENV = {"LEASE_TIMEOUT_S": "5", "REAPER_INTERVAL_S": "1", "REQUEUE_QUEUED_AFTER_S": "4",
                "CHECKPOINT_INTERVAL_S": "0", "MAX_ATTEMPTS": "3"}
FAULT_TIMEOUT_S = float(os.environ.get("BACKPROP_FAULT_JOB_TIMEOUT", "120"))


class RedisServer:
    """A redis-server of one test's own, append-only as in docker-compose.yml."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, on the same port and data) and wait until it answers."""
        path = shutil.which("redis-server")
        if path is None:
            skip_or_fail("redis-server is not installed (apt-get install redis-server)")
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen([path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--dir", str(self.workdir)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except Exception:
                return False

        wait_for(answers, 20, 0.1, "redis-server answering a ping")

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=1)

    def stop(self) -> None:
        """Stop it the way `docker compose restart` does (SIGTERM: the append-only file is kept)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)  # the outage under test: the broker stays down this long
        self.start()


class FaultStack(Stack):
    """The API and several named workers that tests kill, restart and signal."""

    def __init__(self, backend: str, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(backend, workdir, env)
        self.workers: list[str] = []
        self.redis: RedisServer | None = None

    def start(self, workers: int = 1) -> None:  # type: ignore[override]
        """Migrate, start the API and `workers` workers, and wait until /readyz says ready."""
        migrate = self._spawn("migrate", compose_command("migrate"))
        if migrate.wait(timeout=120) != 0:
            raise RuntimeError(f"migrate failed\n{self.log_text()}")
        if self.api_key is None:
            self.create_key()  # AUTH on, as compose runs it
        self.start_api()
        for _ in range(workers):
            self.start_worker()
        self.wait_ready()

    def start_api(self) -> None:
        api = compose_command("api")
        api[api.index("--bind") + 1] = f"127.0.0.1:{self.port}"
        self._spawn("api", api)

    def start_worker(self) -> str:
        """Start one more worker (concurrency 1, as compose runs it here); return its name."""
        name = f"worker-{len(self.workers) + 1}"
        argv = compose_command("worker") + ["--hostname", f"fault-{name}-{os.getpid()}@%h"]
        self._spawn(name, argv)
        self.workers.append(name)
        return name

    def wait_worker_ready(self, name: str, timeout: float = 60) -> None:
        """Wait until the worker's log says it is ready (connected and consuming)."""

        def ready() -> bool:
            if " ready." in self.logs[name].read_text(errors="replace"):
                return True
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited\n{self.log_text()}")
            return False

        wait_for(ready, timeout, 0.2, lambda: f"{name} ready\n{self.log_text()}")

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until /readyz answers 200, then until each living worker is ready."""
        deadline = time.monotonic() + timeout

        def api_ready() -> bool:
            if self.procs["api"].poll() is not None:
                raise RuntimeError(f"api exited {self.procs['api'].returncode}\n{self.log_text()}")
            try:
                return self.http.get(self.url("/readyz"), timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(api_ready, timeout, 0.3, lambda: f"the API ready\n{self.log_text()}")
        for name in self.workers:
            if self.procs[name].poll() is None:
                self.wait_worker_ready(name, max(1.0, deadline - time.monotonic()))

    def signal(self, name: str, sig: int, group: bool = False) -> None:
        """Send sig to a process (its main process, or its whole group: Celery's pool too)."""
        if group:
            _signal_group(self.procs[name], sig)
        else:
            self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        """kill -9 a process and its children, and wait for it."""
        self.signal(name, signal.SIGKILL, group=True)
        self.procs[name].wait(timeout=20)

    # Finer than Stack's: tests kill a worker as soon as a job reaches an epoch.
    poll_s = 0.1

    def check_processes(self, job: dict[str, Any]) -> None:
        """Nothing to check: these tests kill and restart the processes on purpose."""

    def wait_job(self, job_id: str, until: tuple[str, ...] = TERMINAL,
                 timeout: float = FAULT_TIMEOUT_S, min_epoch: int = 0) -> dict[str, Any]:
        """Stack.wait_job with the fault suite's longer timeout."""
        return super().wait_job(job_id, until, timeout, min_epoch)

    def models_of(self, job_id: str) -> list[dict[str, Any]]:
        """Return the models trained by a job."""
        return [m for m in self.request("GET", "/v1/models", params={"limit": 100})["items"]
                if m["job_id"] == job_id]

    def log_of(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")


@pytest.fixture(params=["sqlite", "postgres"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The way to run: embedded (`sqlite`) or deployment (`postgres` with Redis)."""
    return request.param


@pytest.fixture
def faulty(request: pytest.FixtureRequest, backend_name: str, tmp_path: Path) -> Iterator[FaultStack]:
    """An API and one worker (start more with start_worker) on short recovery settings; not started.

    A test may add settings to `env` before calling start().
    """
    env = {key: value for key, value in os.environ.items()
           if key not in STACK_VARIABLES and key not in RECOVERY_ENV and key != "VISIBILITY_TIMEOUT_S"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               DATA_DIR=str(tmp_path / "data"), MAX_UPLOAD_MB="64", **RECOVERY_ENV)
    with ExitStack() as resources:
        redis_server = None
        if backend_name == "postgres":
            env["DATABASE_URL"] = resources.enter_context(_postgres_database())
            redis_server = RedisServer(tmp_path)
            redis_server.start()
            resources.callback(redis_server.stop)
            env["CELERY_BROKER_URL"] = redis_server.url
        running = FaultStack(backend_name, tmp_path, env)
        running.redis = redis_server
        request.node.fault_stack = running
        resources.callback(running.stop)
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the processes' logs to a failing fault test's report."""
    outcome = yield
    report = outcome.get_result()
    running = getattr(item, "fault_stack", None)
    if report.failed and running is not None:
        report.sections.append((f"service logs ({running.backend})", running.log_text()))


@pytest.fixture(scope="session")
def blobs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three Gaussian classes over 16 features, 2,400 rows: a few seconds of training in small batches."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=2400)
    X = rng.normal(size=(2400, 16)) + labels[:, None] * 0.8
    rows = ([*np.round(x, 4), int(label)] for x, label in zip(X, labels))
    path = tmp_path_factory.mktemp("fault-data") / "blobs.csv"
    return write_csv(path, [f"f{i}" for i in range(16)] + ["label"], rows)


def job_body(dataset_id: str, epochs: int = 30) -> dict[str, Any]:
    """A job of about a third of a second per epoch here: long enough to break mid-way."""
    return {"dataset_id": dataset_id,
            "network": mlp((64, 64), outputs=3),
            "training": {"epochs": epochs, "batch_size": 8, "learning_rate": 0.001, "seed": 0,
                         "early_stopping_patience": 0}}

"""Run the service as real processes, the way docker-compose.yml runs it.

The `stack` fixture starts `flask --app service db upgrade`, then the API
(gunicorn) and one Celery worker, with the commands read from
docker-compose.yml's `migrate`, `api` and `worker` services, on a free port
and a temporary DATA_DIR. It is parametrized over the two ways to run:

- `sqlite`: nothing but DATA_DIR set, so the embedded defaults apply (SQLite
  database, Kombu's SQLAlchemy transport on SQLite);
- `postgres`: a fresh PostgreSQL database (created, then dropped) and a Redis
  database number of its own (flushed before and after).

The processes are killed at teardown; a failing test gets their logs in its report.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from service.client import TERMINAL, Client
from tests.conftest import require_postgres, require_redis, skip_or_fail
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
JOB_TIMEOUT_S = float(os.environ.get("BACKPROP_E2E_JOB_TIMEOUT", "240"))
CHROMIUM = os.environ.get("BACKPROP_CHROMIUM", "/usr/bin/chromium")
# What the compose file's ${VAR:-default}s become here: a 2-core machine.
COMPOSE_VARIABLES = {"API_WORKERS": "2", "WORKER_CONCURRENCY": "1"}
# Variables of the caller's environment that must not leak into the stack.
STACK_VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL", "DATA_DIR", "PORT", "MAX_UPLOAD_MB", "WORKER_DEVICE",
                   "AUTH", "BACKPROP_API_KEY")


@pytest.fixture(scope="session")
def tool() -> Callable[[str, str], str]:
    """Return a function that finds a command-line tool, or skips (fails in CI) naming how to install it."""

    def find(name: str, install: str) -> str:
        path = shutil.which(name)
        if path is None:
            skip_or_fail(f"{name} is not installed ({install})")
        return path

    return find


# --- compose commands ---------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def fill_variables(value: str, variables: dict[str, str] | None = None) -> str:
    """Fill a compose value's ${VAR:-default}s as compose would here (COMPOSE_VARIABLES, `variables`)."""
    values = {**COMPOSE_VARIABLES, **(variables or {})}

    def fill(match: re.Match[str]) -> str:
        return values.get(match.group(1), match.group(2) or "")

    return _VARIABLE.sub(fill, value)


def compose_command(service: str, variables: dict[str, str] | None = None) -> list[str]:
    """Return a compose service's command, its ${VAR:-default}s filled in as compose would."""
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    command = spec["services"][service]["command"]
    return [fill_variables(str(part), variables) for part in command]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- backends -----------------------------------------------------------------------------------


@contextmanager
def _postgres_database() -> Iterator[str]:
    """Create a database of its own for one run; yield its SQLAlchemy URL; drop it."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url = require_postgres()
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        skip_or_fail(f"PostgreSQL at {admin_url} refused the connection: {exc}".strip())
    name = f"backprop_e2e_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def _redis_database() -> Iterator[str]:
    """Pick an empty Redis database number (no other run is using it), yield its URL, flush it."""
    import redis

    base_url = require_redis().rstrip("/")
    for number in range(14, 7, -1):  # tests/workers uses 15
        url = f"{base_url}/{number}"
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            if client.dbsize() == 0:
                break
            client.close()
        except redis.RedisError as exc:
            skip_or_fail(f"Redis at {base_url} does not answer: {exc}")
    else:
        pytest.fail("Redis databases 8 to 14 are all in use; flush one for the end-to-end tests")
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


# --- the stack ----------------------------------------------------------------------------------


class Stack:
    """The API and a worker running as processes, and a small HTTP client for them."""

    def __init__(self, backend: str, workdir: Path, env: dict[str, str]) -> None:
        self.backend = backend
        self.workdir = workdir
        # Keys required, as compose sets it for the api and worker services.
        env.setdefault("AUTH", "on")
        self.env = env
        self.api_key: str | None = None  # created by start() when AUTH is on
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    # processes

    def _log(self, name: str) -> Any:
        self.logs[name] = self.workdir / f"{name}.log"
        return self.logs[name].open("ab")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self._log(name) as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            # A session of its own, so that teardown can signal Celery's pool too.
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        """Migrate, start the worker and the API, and wait until /readyz says ready."""
        migrate = self._spawn("migrate", compose_command("migrate"))
        try:
            rc = migrate.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            raise RuntimeError(f"migrate exited {rc}\n{self.log_text()}")
        self.create_key()

        worker = compose_command("worker")
        # A node name of its own: several test runs may share this host.
        worker += ["--hostname", f"e2e-{self.backend}-{os.getpid()}@%h"]
        self._spawn("worker", worker)

        api = compose_command("api")
        api[api.index("--bind") + 1] = f"127.0.0.1:{self.port}"
        self._spawn("api", api)
        self.wait_ready()

    def create_key(self, tenant: str = "e2e") -> str | None:
        """With AUTH on, create a key as an operator does (`flask --app service keys create`) and
        send it with every request from now on: self.http, and BACKPROP_API_KEY for the CLI."""
        if self.env.get("AUTH") == "off":
            return None
        argv = [str(BIN / "flask"), "--app", "service", "keys", "create", "--tenant", tenant]
        result = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"keys create exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        self.api_key = result.stdout.strip()
        self.http.headers["Authorization"] = f"Bearer {self.api_key}"
        self.env["BACKPROP_API_KEY"] = self.api_key
        return self.api_key

    def auth_headers(self) -> dict[str, str]:
        """Return the Authorization header of the stack's key (none when AUTH is off)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_ready(self, timeout: float = 90) -> None:
        """Poll /readyz until it answers 200; fail with the logs if a process dies first."""
        last = ["no answer"]

        def ready() -> bool:
            for name in ("api", "worker"):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited {self.procs[name].returncode}\n{self.log_text()}")
            try:
                response = self.http.get(self.url("/readyz"), timeout=5)
            except requests.RequestException as exc:
                last[0] = repr(exc)
                return False
            last[0] = f"{response.status_code} {response.text[:300]}"
            return response.status_code == 200

        wait_for(ready, timeout, 0.3, lambda: f"the API ready (last: {last[0]})\n{self.log_text()}")

    def stop(self) -> None:
        """Stop every process and its children: gently, then for good."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                # Celery's cold shutdown (SIGQUIT) does not wait for a running task.
                sig = signal.SIGQUIT if name == "worker" else signal.SIGTERM
                _signal_group(proc, sig)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)  # the group may outlive its leader
            if proc.poll() is None:
                proc.wait(timeout=10)
        self.http.close()

    def log_text(self, lines: int = 150) -> str:
        """Return the last lines of each process's log, less gunicorn's access lines for 2xx answers."""
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            text = [line for line in text if not _ACCESS_OK.search(line)]
            parts.append(f"----- {self.backend} {name} ({path}) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    # HTTP

    def url(self, path: str) -> str:
        return self.base_url + path

    def request(self, method: str, path: str, expect: int | tuple[int, ...] = 200, **kwargs: Any) -> Any:
        """Send a request; fail with the problem document unless the status is expected."""
        kwargs.setdefault("timeout", 60)
        response = self.http.request(method, self.url(path), **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in expected, (
            f"{method} {path}: {response.status_code}, expected {expect}: {response.text[:2000]}")
        return response.json() if response.content else None

    def upload_csv(self, path: Path, **fields: str) -> dict[str, Any]:
        """Upload a CSV file as multipart; return the dataset."""
        with path.open("rb") as file:
            return self.request("POST", "/v1/datasets", 201, files={"file": (path.name, file, "text/csv")},
                                data=fields)

    def api_client(self) -> Client:
        """Return the project's own client (service.client.Client) for this stack, with its key."""
        return Client(self.base_url, api_key=self.api_key)

    def start_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a training job; return it."""
        return self.request("POST", "/v1/jobs", 202, json=body)

    # Seconds between two polls of a job.
    poll_s = 0.25

    def check_processes(self, job: dict[str, Any]) -> None:
        """Fail the test if the API or the worker has exited while `job` was not finished."""
        if job["status"] in TERMINAL:
            return
        for name in ("api", "worker"):
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited {self.procs[name].returncode} while job {job['id']} was {job['status']}")

    def wait_job(self, job_id: str, until: tuple[str, ...] = TERMINAL,
                 timeout: float = JOB_TIMEOUT_S, min_epoch: int = 0) -> dict[str, Any]:
        """Poll a job until its status is one of `until` (and its epoch >= min_epoch); return it.

        Waiting for the end, it is Client.wait_job; it fails the test early if the job ends in
        another status than `until`, or if a process of the stack dies (check_processes).
        """
        client = self.api_client()
        if set(until) == set(TERMINAL) and min_epoch == 0:
            try:
                return client.wait_job(job_id, poll_s=self.poll_s, timeout=timeout, on_update=self.check_processes)
            except TimeoutError as exc:
                pytest.fail(str(exc))
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            job = last["job"] = client.get_job(job_id)
            if job["status"] in until and job["progress"]["epoch"] >= min_epoch:
                return job
            if job["status"] in TERMINAL:
                pytest.fail(f"job {job_id} ended {job['status']}, waiting for {until}: {job}")
            self.check_processes(job)
            return None

        return wait_for(reached, timeout, self.poll_s,
                        lambda: f"job {job_id} {until} (epoch >= {min_epoch}): {last.get('job')}")

    def train(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a job and wait for it to succeed; return the finished job."""
        job = self.wait_job(self.start_job(body)["id"])
        assert job["status"] == "succeeded", f"job ended {job['status']}: {job.get('error')}"
        assert job.get("model_id"), job
        return job

    def predict(self, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/v1/models/{model_id}/predict", json=body)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_running_stacks: list[Stack] = []
_ACCESS_OK = re.compile(r'^\S+ - \S+ \[[^]]+\] "[A-Z]+ [^"]*" 2\d\d ')


@contextmanager
def _running_stack(backend: str, tmp_path_factory: pytest.TempPathFactory, auth: str) -> Iterator[Stack]:
    """Start a stack on a backend with AUTH on (a key created and sent) or off; stop it at the end."""
    workdir = tmp_path_factory.mktemp(f"stack-{backend}-auth-{auth}")
    env = {key: value for key, value in os.environ.items() if key not in STACK_VARIABLES}
    # PYTHONPATH as in the Dockerfile: the code runs from the checkout, installed or not.
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               DATA_DIR=str(workdir / "data"), MAX_UPLOAD_MB="64", AUTH=auth)
    with ExitStack() as resources:
        if backend == "postgres":
            env["DATABASE_URL"] = resources.enter_context(_postgres_database())
            env["CELERY_BROKER_URL"] = resources.enter_context(_redis_database())
        running = Stack(backend, workdir, env)
        _running_stacks.append(running)
        resources.callback(_running_stacks.remove, running)
        resources.callback(running.stop)
        running.start()
        yield running


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running API and worker on one backend, `sqlite` or `postgres` (with Redis), as compose
    runs them: AUTH on, with a key of tenant `e2e` that every request of the stack sends."""
    with _running_stack(request.param, tmp_path_factory, "on") as running:
        yield running


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def open_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with AUTH off, as `make run` serves on 127.0.0.1: no key needed."""
    with _running_stack(request.param, tmp_path_factory, "off") as running:
        yield running


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the logs of the processes a failing test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        used = funcargs.get("stack") or funcargs.get("open_stack")
        for running in [used] if used else list(_running_stacks):
            report.sections.append((f"service logs ({running.backend})", running.log_text()))


# --- data sets ----------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: Any) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-data")


@pytest.fixture(scope="session")
def digits(data_dir: Path) -> dict[str, Any]:
    """scikit-learn's digits: a CSV of 75% of the rows, and the 25% held out (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    header = [f"px{i}" for i in range(X.shape[1])] + ["digit"]
    rows = ([*map(int, x), int(label)] for x, label in zip(X_train, y_train))
    return {"csv": write_csv(data_dir / "digits.csv", header, rows), "X_test": X_test, "y_test": y_test}


@pytest.fixture(scope="session")
def pets(data_dir: Path) -> dict[str, Any]:
    """Cats and dogs: a string target and a categorical feature (colour), 25% held out."""
    rng = np.random.default_rng(1)
    colours = ["black", "white", "ginger", "brown"]
    rows = []
    for _ in range(800):
        if rng.random() < 0.5:
            animal, weight, height = "cat", rng.normal(4.5, 1.2), rng.normal(25, 4)
            colour = rng.choice(colours, p=[0.3, 0.3, 0.3, 0.1])
        else:
            animal, weight, height = "dog", rng.normal(18, 7), rng.normal(50, 12)
            colour = rng.choice(colours, p=[0.3, 0.2, 0.05, 0.45])
        rows.append([round(max(weight, 1.5), 2), round(max(height, 15), 1), str(colour), animal])
    train, test = rows[:600], rows[600:]
    header = ["weight_kg", "height_cm", "colour", "animal"]
    return {"csv": write_csv(data_dir / "pets.csv", header, train), "columns": header[:-1],
            "test": test}


@pytest.fixture(scope="session")
def waves(data_dir: Path) -> dict[str, Any]:
    """A regression target far from zero mean and unit scale: y = 1000 + 200 sin(x0) + 80 x1 - 40 x2^2."""
    rng = np.random.default_rng(2)
    X = rng.uniform(-2, 2, size=(1600, 3))
    y = 1000 + 200 * np.sin(X[:, 0]) + 80 * X[:, 1] - 40 * X[:, 2] ** 2 + rng.normal(0, 5, size=len(X))
    n_train = 1200
    rows = ([*np.round(x, 5), round(float(target), 3)] for x, target in zip(X[:n_train], y[:n_train]))
    return {"csv": write_csv(data_dir / "waves.csv", ["x0", "x1", "x2", "y"], rows),
            "X_test": X[n_train:], "y_test": y[n_train:]}


# --- the browser of the dashboard tests ---------------------------------------------------------


def chromium_path() -> str | None:
    """The chromium to drive: $BACKPROP_CHROMIUM or /usr/bin/chromium, else the one on PATH."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (no `playwright install` download).

    One for the session: Playwright's sync API runs one instance per thread, so the dashboard
    test modules share it.
    """
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        skip_or_fail(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # No sandbox: CI and containers run the tests as root, where chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()

"""Real processes for the service benchmarks: the API under gunicorn (as compose runs it) and Celery workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_children: list[int] = []

# A benchmark stopped by SIGTERM (timeout, Ctrl-C from a runner) still stops its servers:
# SystemExit runs the context managers' cleanup, where the default action would not.
signal.signal(signal.SIGTERM, lambda *_args: sys.exit(143))



POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379"


def servers_reachable() -> bool:
    """Say whether PostgreSQL and Redis answer on their usual local ports."""
    try:
        for port in (5432, 6379):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextmanager
def fresh_postgres_redis(prefix: str) -> Iterator[tuple[str, str]]:
    """Yield (DATABASE_URL, CELERY_BROKER_URL): a new PostgreSQL database and an empty Redis one.

    The database is dropped and the Redis database flushed afterwards. Redis numbers 8 to 14
    are tried from the top, as tests/e2e does, so a benchmark never shares one with a test run.
    """
    import psycopg
    import redis

    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    client = None
    try:
        for number in range(14, 7, -1):
            client = redis.Redis.from_url(f"{REDIS}/{number}", socket_connect_timeout=3)
            if client.dbsize() == 0:
                break
            client.close()
        else:
            raise RuntimeError("Redis databases 8 to 14 are all in use")
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", f"{REDIS}/{number}"
    finally:
        if client is not None:
            client.flushdb()
            client.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def backends(servers: bool, prefix: str) -> Iterator[tuple[str | None, str | None]]:
    """Yield (DATABASE_URL, CELERY_BROKER_URL): None, None for the embedded defaults (SQLite),
    or a fresh PostgreSQL database and Redis database when `servers`."""
    if not servers:
        yield None, None
        return
    with fresh_postgres_redis(prefix) as urls:
        yield urls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(data_dir: str, database_url: str | None = None, broker_url: str | None = None,
                **extra: str) -> dict[str, str]:
    """The environment of the stack: DATA_DIR, AUTH on (as compose sets it), and the database and
    broker when not embedded."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DATA_DIR", "PORT", "MAX_UPLOAD_MB", "AUTH")}
    env["DATA_DIR"] = data_dir
    env["AUTH"] = "on"
    env["PYTHONPATH"] = str(ROOT)
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def gunicorn(app: str, env: dict[str, str], workers: int, threads: int = 4,
             ready_path: str = "/healthz", log: Path | None = None) -> Iterator[str]:
    """Serve `app` under gunicorn with compose's settings (threads 4); yield the base URL."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--threads", str(threads), app]
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _children.append(proc.pid)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + ready_path)
        yield base
    finally:
        _stop(proc)
        _children.remove(proc.pid)
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def api_server(data_dir: str, workers: int = 1, database_url: str | None = None,
               broker_url: str | None = None, max_upload_mb: int = 512) -> Iterator[str]:
    """The service's API (migrated first, as compose's `migrate` does); yield the base URL."""
    env = service_env(data_dir, database_url, broker_url, MAX_UPLOAD_MB=str(max_upload_mb))
    subprocess.run([str(BIN / "flask"), "--app", "service", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with gunicorn("service:create_app()", env, workers, log=Path(data_dir) / "api.log") as base:
        yield base


def create_api_key(env: dict[str, str], tenant: str = "bench") -> str:
    """Create an API key as an operator does (`flask --app service keys create`); return it.

    Send it as `Authorization: Bearer KEY` (auth_headers): the benchmarks measure the
    service with authentication on, as it runs in production.
    """
    done = subprocess.run([str(BIN / "flask"), "--app", "service", "keys", "create", "--tenant", tenant],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"flask keys create failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1].strip()


def auth_headers(key: str | None) -> dict[str, str]:
    """Return the Authorization header of a key (none for None)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


@contextmanager
def celery_worker(data_dir: str, database_url: str | None = None, broker_url: str | None = None,
                  concurrency: int = 1, queues: str = "cpu") -> Iterator[subprocess.Popen]:
    """One Celery worker as compose runs it (the caller's first job waits for it to be up)."""
    env = service_env(data_dir, database_url, broker_url)
    argv = [str(BIN / "celery"), "-A", "workers", "worker", "-Q", queues, "--concurrency", str(concurrency),
            "--loglevel", "WARNING"]
    with open(Path(data_dir) / "worker.log", "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            _stop(proc, grace=20)


def worker_pids() -> list[int]:
    """Return the pids of the gunicorn workers of the server started last."""
    master = _children[-1]
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]

"""Run the service on one machine with no server: API and one Celery worker.

`make run` calls this. It migrates the schema, then starts the API (gunicorn,
one process, on 127.0.0.1:$PORT) and one Celery worker on queue `cpu`, both
on SQLite and Kombu's SQLAlchemy transport unless DATABASE_URL and
CELERY_BROKER_URL say otherwise. It runs with AUTH=off (no API keys; everything
belongs to tenant `default`) unless the caller sets AUTH, which is why the API
listens on 127.0.0.1 only. Ctrl-C (or SIGTERM) stops both: the API at
once, the worker after its current task or WORKER_GRACE_S seconds (default 10),
whichever comes first; a second Ctrl-C stops it at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _die_with_parent() -> None:
    """Have the kernel SIGTERM this child if the launcher dies without cleaning up."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the launcher's own handlers are all there is


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a child in its own session, so Ctrl-C reaches it only through us."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    print(f"[run] {name} (pid {proc.pid}): {' '.join(argv)}", flush=True)
    return proc


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Send sig to the child alone: gunicorn's and Celery's main processes stop their own workers."""
    if proc.poll() is None:
        proc.send_signal(sig)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (Celery's pool, gunicorn's workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait(procs: list[subprocess.Popen], timeout: float) -> bool:
    """Wait until every proc has exited or timeout passes; True when all exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in procs):
            return True
        time.sleep(0.1)
    return all(p.poll() is not None for p in procs)


def _wait_healthy(url: str, api: subprocess.Popen, timeout: float = 60) -> bool:
    """Poll url until it answers 200, the API exits, or timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and api.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    """Migrate, start API and worker, and stop both on the first signal or exit."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # Celery's pool processes import from sys.path alone: make the checkout importable
    # even where it is not pip-installed (as the Dockerfile does).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    port = env.setdefault("PORT", "8000")
    # One user on one machine: no keys, unless the caller asks for them (AUTH=on).
    auth = env.setdefault("AUTH", "off")
    grace = float(env.get("WORKER_GRACE_S", "10"))
    Path(env.setdefault("DATA_DIR", str(ROOT / "var"))).mkdir(parents=True, exist_ok=True)

    print("[run] migrating the schema", flush=True)
    migrate = subprocess.run([str(BIN / "flask"), "--app", "service", "db", "upgrade"], cwd=ROOT, env=env)
    if migrate.returncode != 0:
        print("[run] migration failed; not starting", file=sys.stderr)
        return migrate.returncode

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    worker = _spawn(
        "worker",
        [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "cpu", "--concurrency", "1",
         "--loglevel", "INFO", "--hostname", f"embedded-{os.getpid()}@%h"],
        env,
    )
    api = _spawn(
        "api",
        [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8",
         "--access-logfile", "-", "service:create_app()"],
        env,
    )
    procs = {"api": api, "worker": worker}

    if _wait_healthy(f"http://127.0.0.1:{port}/healthz", api):
        if auth.strip().lower() == "off":
            print("\n[run] AUTH=off: requests are not authenticated; every resource belongs to tenant "
                  "'default'. Listening on 127.0.0.1 only.", flush=True)
        else:
            print("\n[run] AUTH=on: send 'Authorization: Bearer KEY'; create a key with "
                  "`flask --app service keys create --tenant NAME`.", flush=True)
        print(f"[run] serving on http://127.0.0.1:{port}  (docs: /docs; Ctrl-C stops API and worker)\n", flush=True)

    exit_code = 0
    while not stopping:
        ended = [name for name, proc in procs.items() if proc.poll() is not None]
        if ended:
            print(f"[run] {ended[0]} exited with {procs[ended[0]].returncode}; stopping", file=sys.stderr)
            exit_code = 1
            break
        time.sleep(0.2)

    print("[run] stopping", flush=True)
    # Gunicorn: SIGTERM is its graceful stop. Celery: SIGTERM is a warm
    # shutdown that lets the running task finish; SIGQUIT is a cold one.
    _signal(api, signal.SIGTERM)
    _signal(worker, signal.SIGTERM)
    signals_before = len(stopping)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and len(stopping) == signals_before:
        if _wait([api, worker], 0.2):
            break
    if worker.poll() is None:
        print("[run] the worker is still busy; stopping it now", flush=True)
        _signal(worker, signal.SIGQUIT)
    _wait([api, worker], 5)
    for proc in (api, worker):
        _kill_group(proc)  # whatever is left, pool processes included
    _wait([api, worker], 5)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

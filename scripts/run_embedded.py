"""Run the service on one machine with no server: API and one Celery worker.

`make run` calls this. It migrates the schema, then starts the API (gunicorn,
one process, on a Unix socket of its own) behind a small front that listens on
127.0.0.1:$PORT, and one Celery worker on queue `cpu`, both on SQLite and
Kombu's SQLAlchemy transport unless DATABASE_URL and CELERY_BROKER_URL say
otherwise. It runs with AUTH=off (no API keys; everything belongs to tenant
`default`) unless the caller sets AUTH, which is why it listens on 127.0.0.1
only.

The front reads each request's head (and a small body) whole before gunicorn
sees it, so a client that sends its request a byte at a time holds none of
gunicorn's threads; a head that has not arrived within HEAD_TIMEOUT_S is
answered 408. A worker that dies (the OOM killer, a crash) is started again
after a backoff, and the leases of the jobs it held are expired at once so the
new worker's reaper resumes them from their checkpoints; after
WORKER_MAX_FAST_EXITS exits in a row, each within WORKER_STABLE_S of its start,
the launcher gives up and stops with exit status 1. The API stays up meanwhile.

Ctrl-C (or SIGTERM) stops both: the API at once, the worker after its current
task or WORKER_GRACE_S seconds (default 10), whichever comes first; a second
Ctrl-C stops it at once. See docs/running.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
if str(ROOT) not in sys.path:  # the launcher reads the job table (service.core) even where it is not installed
    sys.path.insert(0, str(ROOT))

# The worker's restarts: the first after WORKER_BACKOFF_S, doubling for each exit in a row,
# at most WORKER_MAX_BACKOFF_S. An exit within WORKER_STABLE_S of the start is a "fast" one;
# WORKER_MAX_FAST_EXITS of them in a row is a worker that cannot run: the launcher gives up.
WORKER_BACKOFF_S = 1.0
WORKER_MAX_BACKOFF_S = 30.0
WORKER_STABLE_S = 60.0
WORKER_MAX_FAST_EXITS = 5

# The front (see Front). gunicorn's own limits on a head (100 fields of 8 KiB) are well
# under MAX_HEAD_BYTES, so only a head gunicorn would refuse anyway is refused here.
HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 1 << 20
BUFFERED_BODY_BYTES = 1 << 20
PIPE_CHUNK_BYTES = 1 << 16
LINGER_S = 2.0


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


def _signal(proc: subprocess.Popen | None, sig: int) -> None:
    """Send sig to the child alone: gunicorn's and Celery's main processes stop their own workers."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (Celery's pool, gunicorn's workers included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
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


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with {returncode}"


# --- the worker's jobs ----------------------------------------------------------------------------


def _process_exists(pid: int) -> bool:
    """Say whether pid is a living process of this host (a zombie is dead: pid 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def expire_leases_of_dead_processes() -> list[str]:
    """Make stale the lease of every running job held by a process of this host that is gone.

    A worker's lease owner is `host:pid` (workers.lease.default_owner). A job whose
    worker died keeps its lease until LEASE_TIMEOUT_S passes without a heartbeat; the
    launcher knows sooner, so it dates the heartbeat back past the timeout (compare-and-set
    on the owner), and the reaper's next pass settles the job by its usual rules (resumed,
    cancelled, or failed past its time limit or MAX_ATTEMPTS). Returns the jobs' ids; on a
    database error, none (the lease then runs out by itself).
    """
    from sqlalchemy import select, update

    from service.core.db.engine import make_engine
    from service.core.db.tables import Job
    from service.core.ids import utcnow
    from service.core.settings import load_config
    from service.core.statuses import JobStatus

    host = socket.gethostname()
    expired: list[str] = []
    engine = None
    try:
        config = load_config()
        engine = make_engine(config["DATABASE_URL"])
        with engine.begin() as connection:
            held = connection.execute(select(Job.id, Job.owner).where(Job.status == JobStatus.RUNNING)).all()
            for job_id, owner in held:
                owner_host, _, pid = (owner or "").rpartition(":")
                if owner_host != host or not pid.isdigit() or _process_exists(int(pid)):
                    continue
                stale = utcnow() - timedelta(seconds=config["LEASE_TIMEOUT_S"] + 1)
                changed = connection.execute(update(Job).where(
                    Job.id == job_id, Job.owner == owner, Job.status == JobStatus.RUNNING,
                ).values(heartbeat_at=stale)).rowcount
                if changed:
                    expired.append(job_id)
    except Exception as error:  # settings or database unusable: the leases run out by themselves
        print(f"[run] could not check the jobs of dead workers ({error}); their leases will run out",
              file=sys.stderr, flush=True)
    finally:
        if engine is not None:
            engine.dispose()
    if expired:
        print(f"[run] the lease of {', '.join(expired)} was held by a dead worker: expired, so the next "
              f"reaper pass resumes it", flush=True)
    return expired


class SupervisedWorker:
    """The Celery worker, started again (after a backoff) whenever it exits on its own."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.fast_exits = 0
        self.restart_at: float | None = None

    def start(self) -> None:
        """Start it, first expiring the leases its dead predecessors held."""
        expire_leases_of_dead_processes()
        self.proc = _spawn("worker", self.argv, self.env)
        self.started_at = time.monotonic()
        self.restart_at = None

    def supervise(self) -> bool:
        """Start it again when due; False when it keeps exiting and the launcher must give up."""
        now = time.monotonic()
        if self.proc is None:
            if self.restart_at is not None and now >= self.restart_at:
                self.start()
            return True
        if self.proc.poll() is None:
            return True
        dead, lived = self.proc, now - self.started_at
        _kill_group(dead)  # pool processes that outlived their main process would hold the job
        self.proc = None
        self.fast_exits = self.fast_exits + 1 if lived < WORKER_STABLE_S else 1
        ended = f"[run] the worker (pid {dead.pid}) {_how_it_ended(dead.returncode)} after {lived:.0f} s"
        if self.fast_exits >= WORKER_MAX_FAST_EXITS:
            expire_leases_of_dead_processes()  # the next `make run` resumes them at once
            print(f"{ended}\n[run] the worker exited {self.fast_exits} times in a row within "
                  f"{WORKER_STABLE_S:g} s of starting; giving up (see its output above)", file=sys.stderr, flush=True)
            return False
        delay = min(WORKER_BACKOFF_S * 2 ** (self.fast_exits - 1), WORKER_MAX_BACKOFF_S)
        print(f"{ended}; starting it again in {delay:g} s", file=sys.stderr, flush=True)
        self.restart_at = now + delay
        return True


# --- the front --------------------------------------------------------------------------------


def _one_request_only(head: bytes) -> tuple[bytes, int | None]:
    """Return the head with `Connection: close`, and the body's length when it may be read here first.

    gunicorn then closes the connection after its response, so it never waits, in one
    of its threads, for a next request on it: every request comes through the front.
    The length is None for a chunked body, an `Expect: 100-continue` or a body larger
    than BUFFERED_BODY_BYTES: those are passed on as they arrive.
    """
    request_line, *lines = head[:-4].split(b"\r\n")
    fields = [(line.partition(b":")[0].strip().lower(), line) for line in lines]
    kept = [(name, line) for name, line in fields if name not in (b"connection", b"keep-alive")]
    names = [name for name, _ in kept]
    lengths = [line.partition(b":")[2].strip() for name, line in kept if name == b"content-length"]
    length: int | None = 0
    if b"transfer-encoding" in names or b"expect" in names or len(lengths) > 1:
        length = None
    elif lengths:
        length = int(lengths[0]) if lengths[0].isdigit() and int(lengths[0]) <= BUFFERED_BODY_BYTES else None
    return b"\r\n".join([request_line, *(line for _, line in kept), b"Connection: close"]) + b"\r\n\r\n", length


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: HTTPStatus,
                  detail: str) -> None:
    """Answer a problem+json and close, reading what the client still sends for a moment.

    Closing a socket with unread input resets the connection, and the client may then
    lose the answer; so the front half-closes first and reads on briefly (as nginx's
    lingering close does).
    """
    body = json.dumps({"type": "about:blank", "title": status.phrase, "status": status.value,
                       "detail": detail}).encode()
    writer.write((f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/problem+json\r\n"
                  f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
                  ).encode() + body)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    linger_until = asyncio.get_running_loop().time() + LINGER_S
    try:
        while (left := linger_until - asyncio.get_running_loop().time()) > 0:
            if not await asyncio.wait_for(reader.read(PIPE_CHUNK_BYTES), left):
                break
    except (TimeoutError, OSError):
        pass


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, eof: bool) -> None:
    """Copy reader to writer until the reader ends; then half-close the writer when eof."""
    while chunk := await reader.read(PIPE_CHUNK_BYTES):
        writer.write(chunk)
        await writer.drain()
    if eof and writer.can_write_eof():
        writer.write_eof()


class Front:
    """Listen on 127.0.0.1:port and hand each request, its head read whole, to gunicorn on a Unix socket.

    What nginx does for the deployment (docs/running.md), in a thread of the launcher:
    gunicorn's gthread worker reads a request in one of its threads from its first
    byte on, so a few clients that send their heads slowly would hold every thread.
    """

    def __init__(self, port: int, upstream: str) -> None:
        self.port = port
        self.upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="front", daemon=True)

    def start(self) -> None:
        """Bind the port (OSError when it is taken) and start serving in a thread."""
        self._server = self._loop.run_until_complete(asyncio.start_server(
            self._serve, "127.0.0.1", self.port, limit=MAX_HEAD_BYTES, reuse_address=True))
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; connections still open end with the process."""
        if self._server is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._server.close)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            deadline = self._loop.time() + HEAD_TIMEOUT_S
            try:
                head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
                head, length = _one_request_only(head)
                body = b""
                if length:
                    body = await asyncio.wait_for(client_reader.readexactly(length),
                                                  max(0.0, deadline - self._loop.time()))
            except TimeoutError:
                await _refuse(client_reader, client_writer, HTTPStatus.REQUEST_TIMEOUT, (
                    f"the request's head (and a body of up to {BUFFERED_BODY_BYTES} bytes) did not "
                    f"arrive within {HEAD_TIMEOUT_S:g} s"))
                return
            except asyncio.LimitOverrunError:
                await _refuse(client_reader, client_writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                              f"the request's head is larger than {MAX_HEAD_BYTES} bytes")
                return
            except asyncio.IncompleteReadError:
                return  # the client left
            try:
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.upstream)
            except OSError:
                await _refuse(client_reader, client_writer, HTTPStatus.BAD_GATEWAY, "the API is not running")
                return
            upstream_writer.write(head + body)
            to_api = asyncio.ensure_future(_pipe(client_reader, upstream_writer, eof=True))
            to_api.add_done_callback(lambda task: task.cancelled() or task.exception())
            try:
                await _pipe(upstream_reader, client_writer, eof=False)
            finally:
                to_api.cancel()
        except OSError:
            pass  # one side went away: close both
        finally:
            for writer in (upstream_writer, client_writer):
                if writer is not None:
                    writer.close()


# --- the launcher -------------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the API and one Celery worker on this machine (`make run`).")
    parser.add_argument("--worker-command", metavar="COMMAND", help=(
        "run COMMAND (split as a shell would) instead of the Celery worker; for tests of the "
        "worker's supervision"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Migrate, start the front, the API and a supervised worker; stop all on the first signal."""
    arguments = _arguments(argv)
    # Set in the launcher's own environment too: it reads the job table with the children's settings.
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    # Celery's pool processes import from sys.path alone: make the checkout importable
    # even where it is not pip-installed (as the Dockerfile does).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    port = os.environ.setdefault("PORT", "8000")
    # One user on one machine: no keys, unless the caller asks for them (AUTH=on).
    auth = os.environ.setdefault("AUTH", "off")
    grace = float(os.environ.get("WORKER_GRACE_S", "10"))
    Path(os.environ.setdefault("DATA_DIR", str(ROOT / "var"))).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)

    print("[run] migrating the schema", flush=True)
    migrate = subprocess.run([str(BIN / "flask"), "--app", "service", "db", "upgrade"], cwd=ROOT, env=env)
    if migrate.returncode != 0:
        print("[run] migration failed; not starting", file=sys.stderr)
        return migrate.returncode

    # A directory only this user may enter: nothing else on the machine reaches gunicorn but through the front.
    socket_dir = Path(tempfile.mkdtemp(prefix="backprop-run-"))
    upstream = str(socket_dir / "api.sock")
    front = Front(int(port), upstream)
    try:
        front.start()
    except OSError as error:
        print(f"[run] cannot listen on 127.0.0.1:{port}: {error}", file=sys.stderr)
        shutil.rmtree(socket_dir, ignore_errors=True)
        return 1
    print(f"[run] listening on 127.0.0.1:{port} (each request head read whole, then handed to the API "
          f"on unix:{upstream})", flush=True)

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    worker = SupervisedWorker(
        shlex.split(arguments.worker_command) if arguments.worker_command else
        [str(BIN / "celery"), "-A", "workers", "worker", "-Q", "cpu", "--concurrency", "1",
         "--loglevel", "INFO", "--hostname", f"embedded-{os.getpid()}@%h"],
        env,
    )
    worker.start()
    api = _spawn(
        "api",
        [str(BIN / "gunicorn"), "--bind", f"unix:{upstream}", "--workers", "1", "--threads", "8",
         "--access-logfile", "-", "service:create_app()"],
        env,
    )

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
        if api.poll() is not None:
            print(f"[run] api {_how_it_ended(api.returncode)}; stopping", file=sys.stderr)
            exit_code = 1
            break
        if not worker.supervise():
            exit_code = 1
            break
        time.sleep(0.2)

    print("[run] stopping", flush=True)
    # Gunicorn: SIGTERM is its graceful stop. Celery: SIGTERM is a warm
    # shutdown that lets the running task finish; SIGQUIT is a cold one.
    children = [proc for proc in (api, worker.proc) if proc is not None]
    _signal(api, signal.SIGTERM)
    _signal(worker.proc, signal.SIGTERM)
    signals_before = len(stopping)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and len(stopping) == signals_before:
        if _wait(children, 0.2):
            break
    if worker.proc is not None and worker.proc.poll() is None:
        print("[run] the worker is still busy; stopping it now", flush=True)
        _signal(worker.proc, signal.SIGQUIT)
    _wait(children, 5)
    for proc in children:
        _kill_group(proc)  # whatever is left, pool processes included
    _wait(children, 5)
    front.stop()
    shutil.rmtree(socket_dir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

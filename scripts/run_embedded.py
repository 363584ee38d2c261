"""Run the service on one machine with no server: API and one Celery worker.

`make run` calls this. It migrates the schema, then starts the API (gunicorn,
one process, on a Unix socket of its own) behind a small front that listens on
127.0.0.1:$PORT, and one Celery worker on queue `cpu`, both on SQLite and
Kombu's SQLAlchemy transport unless DATABASE_URL and CELERY_BROKER_URL say
otherwise. It runs with AUTH=off (no API keys; everything belongs to tenant
`default`) unless the caller sets AUTH, which is why it listens on 127.0.0.1
only.

The front reads each request whole (its head, then its body, spooled to a file
past 1 MiB) before gunicorn sees it, so a client that sends its request a byte
at a time holds none of gunicorn's threads; a head that has not arrived within
HEAD_TIMEOUT_S, or a body that pauses for BODY_IDLE_S, is answered 408, and a
body over MAX_UPLOAD_MB 413. A worker that dies (the OOM killer, a crash) is started again
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
import concurrent.futures
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
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

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
# BODY_IDLE_S is nginx's client_body_timeout (the environment may set it: the tests do);
# SEND_TIMEOUT_S its send_timeout. MAX_CONNECTIONS keeps a thousand idle connections
# from taking every file descriptor of the launcher.
HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 1 << 20
BODY_IDLE_S = 30.0
SEND_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 256
BUFFERED_BODY_BYTES = 1 << 20
PIPE_CHUNK_BYTES = 1 << 16
LINGER_S = 2.0
MEBIBYTE = 1024 * 1024  # MAX_UPLOAD_MB's unit, as the API counts it (service/api/app.py)


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


class _Refusal(Exception):
    """A request the front answers itself with a problem, the API never seeing it."""

    def __init__(self, status: HTTPStatus, detail: str, title: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title or status.phrase


@dataclass
class _RequestHead:
    """A request's head as the front forwards it, and how its body is framed.

    `lines` are the head's field lines the API gets (Connection, Keep-Alive,
    Transfer-Encoding, Content-Length and `Expect: 100-continue` left out: the front
    writes those itself); `length` is the body's Content-Length (None when chunked, 0
    when there is none); `framed` says whether it had a Content-Length or was chunked.
    """

    request_line: bytes
    lines: list[bytes]
    length: int | None
    framed: bool
    expect_continue: bool

    def for_api(self, body_length: int) -> bytes:
        """The head with the body's length and `Connection: close`.

        gunicorn then closes the connection after its response, so it never waits, in one
        of its threads, for a next request on it: every request comes through the front.
        """
        framing = [f"Content-Length: {body_length}".encode()] if self.framed else []
        return b"\r\n".join([self.request_line, *self.lines, *framing, b"Connection: close"]) + b"\r\n\r\n"


def _parse_head(head: bytes) -> _RequestHead:
    """Read the framing of a head (ending in a blank line); _Refusal for one the front cannot frame."""
    request_line, *lines = head[:-4].split(b"\r\n")
    fields = [(line.partition(b":")[0].strip().lower(), line.partition(b":")[2].strip(), line) for line in lines]
    codings = b",".join(value for name, value, _ in fields if name == b"transfer-encoding")
    lengths = {value for name, value, _ in fields if name == b"content-length"}
    expectations = [value.lower() for name, value, _ in fields if name == b"expect"]
    kept = [line for name, value, line in fields
            if name not in (b"connection", b"keep-alive", b"transfer-encoding", b"content-length")
            and not (name == b"expect" and value.lower() == b"100-continue")]
    if codings:
        if [coding.strip().lower() for coding in codings.split(b",")] != [b"chunked"]:
            raise _Refusal(HTTPStatus.NOT_IMPLEMENTED, "the only transfer coding the API takes is `chunked`")
        if lengths:
            raise _Refusal(HTTPStatus.BAD_REQUEST, "a request may not have both Transfer-Encoding and Content-Length")
        length = None
    elif len(lengths) > 1 or not all(value.isdigit() for value in lengths):
        raise _Refusal(HTTPStatus.BAD_REQUEST, "the request's Content-Length is not one number")
    else:
        length = int(next(iter(lengths), b"0"))
    return _RequestHead(request_line, kept, length, bool(codings or lengths), b"100-continue" in expectations)


class Front:
    """Listen on 127.0.0.1:port and hand each request, read whole, to gunicorn on a Unix socket.

    What nginx does for the deployment (docs/running.md), in a thread of the launcher:
    gunicorn's gthread worker reads a request in one of its threads from its first
    byte on, so a few clients that send their heads or bodies slowly would hold every
    thread. The front reads the head within HEAD_TIMEOUT_S, then the body (a chunked
    one de-chunked) with at most body_idle_s between reads, into memory up to
    BUFFERED_BODY_BYTES and into a file in spool_dir beyond, refusing one over
    max_body_bytes; only then does it connect to gunicorn. A client that reads the
    answer no faster than send_timeout_s allows for each write is dropped, and past
    max_connections open connections a new one is answered 503.
    """

    def __init__(self, port: int, upstream: str, spool_dir: Path, max_body_bytes: int, *,
                 body_idle_s: float = BODY_IDLE_S, send_timeout_s: float = SEND_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.port = port
        self.upstream = upstream
        self.spool_dir = spool_dir
        self.max_body_bytes = max_body_bytes
        self.body_idle_s = body_idle_s
        self.send_timeout_s = send_timeout_s
        self.max_connections = max_connections
        self._open_connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="front", daemon=True)
        self._bound: concurrent.futures.Future[None] = concurrent.futures.Future()

    def start(self) -> None:
        """Bind the port (OSError when it is taken) and start serving in a thread of its own.

        The loop runs in that thread alone: the caller's thread may be running an event loop
        of its own (Playwright's sync API keeps one), and asyncio runs one loop per thread.
        """
        self._thread.start()
        self._bound.result()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._serve, "127.0.0.1", self.port, limit=MAX_HEAD_BYTES, reuse_address=True))
        except BaseException as error:  # handed to start(), which raises it in the caller
            self._bound.set_exception(error)
            return
        self._bound.set_result(None)
        self._loop.run_forever()

    def stop(self) -> None:
        """Stop listening; connections still open end with the process."""
        if self._server is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._server.close)

    # --- to the client

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write to the client; TimeoutError when it takes none of it for send_timeout_s."""
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.send_timeout_s)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusal: _Refusal,
                      linger: bool = True) -> None:
        """Answer a problem+json and close, reading what the client still sends for a moment.

        Closing a socket with unread input resets the connection, and the client may then
        lose the answer; so the front half-closes first and reads on briefly (as nginx's
        lingering close does), unless told not to linger.
        """
        status = refusal.status
        body = json.dumps({"type": "about:blank", "title": refusal.title, "status": status.value,
                           "detail": refusal.detail}).encode()
        retry = "Retry-After: 1\r\n" if status == HTTPStatus.SERVICE_UNAVAILABLE else ""
        await self._send(writer, (
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n{retry}Connection: close\r\n\r\n"
        ).encode() + body)
        if writer.can_write_eof():
            writer.write_eof()
        if not linger:
            return
        linger_until = self._loop.time() + LINGER_S
        try:
            while (left := linger_until - self._loop.time()) > 0:
                if not await asyncio.wait_for(reader.read(PIPE_CHUNK_BYTES), left):
                    break
        except (TimeoutError, OSError):
            pass

    # --- from the client

    async def _read(self, reader: asyncio.StreamReader, most: int) -> bytes:
        """Read up to `most` bytes of the body; TimeoutError after body_idle_s without any."""
        chunk = await asyncio.wait_for(reader.read(most), self.body_idle_s)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", most)
        return chunk

    async def _spool_exactly(self, reader: asyncio.StreamReader, spool: BinaryIO, length: int) -> None:
        while length:
            chunk = await self._read(reader, min(length, PIPE_CHUNK_BYTES))
            spool.write(chunk)
            length -= len(chunk)

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.readuntil(b"\r\n"), self.body_idle_s)

    async def _spool_chunked(self, reader: asyncio.StreamReader, spool: BinaryIO) -> None:
        """Spool a chunked body's data (its chunk sizes, extensions and trailers dropped)."""
        while True:
            size = _chunk_size(await self._line(reader))
            if size == 0:
                break
            if spool.tell() + size > self.max_body_bytes:
                raise _Refusal(*self._too_large())
            await self._spool_exactly(reader, spool, size)
            if await asyncio.wait_for(reader.readexactly(2), self.body_idle_s) != b"\r\n":
                raise _Refusal(HTTPStatus.BAD_REQUEST, "a chunk of the request body does not end in CRLF")
        trailers = 0
        while (line := await self._line(reader)) != b"\r\n":
            trailers += len(line)
            if trailers > MAX_HEAD_BYTES:
                raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                               f"the request's trailers are larger than {MAX_HEAD_BYTES} bytes")

    def _too_large(self) -> tuple[HTTPStatus, str, str]:
        """The API's own 413 (service/api/errors.py), so that a client sees one answer for one limit."""
        from werkzeug.exceptions import RequestEntityTooLarge

        from service.core.problems import body_too_large

        return (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body_too_large(self.max_body_bytes // MEBIBYTE),
                RequestEntityTooLarge().name)

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            spool: BinaryIO) -> bytes:
        """Read a request whole: its body into spool; return the head the API gets."""
        try:
            head = _parse_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S))
        except TimeoutError:
            raise _Refusal(HTTPStatus.REQUEST_TIMEOUT,
                           f"the request's head did not arrive within {HEAD_TIMEOUT_S:g} s") from None
        except asyncio.LimitOverrunError:
            raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                           f"the request's head is larger than {MAX_HEAD_BYTES} bytes") from None
        if head.length is not None and head.length > self.max_body_bytes:
            raise _Refusal(*self._too_large())
        if head.expect_continue and head.length != 0:
            await self._send(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if head.length is None:
                await self._spool_chunked(reader, spool)
            else:
                await self._spool_exactly(reader, spool, head.length)
        except TimeoutError:
            raise _Refusal(HTTPStatus.REQUEST_TIMEOUT, (
                f"the request body paused for more than {self.body_idle_s:g} s (BODY_IDLE_S)")) from None
        except asyncio.LimitOverrunError:
            raise _Refusal(HTTPStatus.BAD_REQUEST, "a chunk size line of the request body is too long") from None
        return head.for_api(spool.tell())

    # --- to the API and back

    async def _send_to_api(self, writer: asyncio.StreamWriter, head: bytes, spool: BinaryIO) -> None:
        writer.write(head)
        spool.seek(0)
        while chunk := spool.read(PIPE_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy the API's answer to the client until the API closes."""
        while chunk := await reader.read(PIPE_CHUNK_BYTES):
            await self._send(writer, chunk)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._open_connections >= self.max_connections:
            try:
                await self._refuse(client_reader, client_writer, _Refusal(HTTPStatus.SERVICE_UNAVAILABLE, (
                    f"{self.max_connections} connections are open; try again shortly")), linger=False)
            except (TimeoutError, OSError):
                pass
            finally:
                client_writer.close()
            return
        self._open_connections += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            with tempfile.SpooledTemporaryFile(BUFFERED_BODY_BYTES, dir=self.spool_dir) as spool:
                try:
                    head = await self._read_request(client_reader, client_writer, spool)
                    upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.upstream)
                except _Refusal as refusal:
                    await self._refuse(client_reader, client_writer, refusal)
                    return
                except OSError:
                    await self._refuse(client_reader, client_writer,
                                       _Refusal(HTTPStatus.BAD_GATEWAY, "the API is not running"))
                    return
                to_api = asyncio.ensure_future(self._send_to_api(upstream_writer, head, spool))
                # The API may answer (a 401, a 413) before it read the body, and close.
                to_api.add_done_callback(lambda task: task.cancelled() or task.exception())
                try:
                    await self._answer(upstream_reader, client_writer)
                finally:
                    to_api.cancel()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # one side went away, or the client took nothing for send_timeout_s: close both
        finally:
            self._open_connections -= 1
            for writer in (upstream_writer, client_writer):
                if writer is not None:
                    writer.close()


def _chunk_size(line: bytes) -> int:
    """The size in a chunk's size line (`1a;name=value` CRLF); _Refusal for one that is not hex."""
    digits = line.partition(b";")[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        raise _Refusal(HTTPStatus.BAD_REQUEST, "a chunk size of the request body is not a hex number")
    return int(digits, 16)


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
    from service.core.settings import load_config

    max_upload_mb = int(load_config()["MAX_UPLOAD_MB"])
    front = Front(int(port), upstream, socket_dir, max_upload_mb * MEBIBYTE,
                  body_idle_s=float(os.environ.get("BODY_IDLE_S", BODY_IDLE_S)))
    try:
        front.start()
    except OSError as error:
        print(f"[run] cannot listen on 127.0.0.1:{port}: {error}", file=sys.stderr)
        shutil.rmtree(socket_dir, ignore_errors=True)
        return 1
    print(f"[run] listening on 127.0.0.1:{port} (each request read whole, a body of up to "
          f"{max_upload_mb} MB, then handed to the API on unix:{upstream})", flush=True)

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

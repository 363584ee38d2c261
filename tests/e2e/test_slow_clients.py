"""`make run` with clients that send their requests a byte at a time (slowloris), on loopback.

gunicorn's gthread worker reads a request in one of its `--threads` once the
first byte arrived, so eight such connections used to stop every request. The
launcher now reads each request whole, head and body, before the API sees it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import requests
from urllib3 import encode_multipart_formdata

from service.core.settings import setting_default
from tests.e2e.conftest import free_port
from tests.e2e.test_run_embedded import LAUNCHER, Launcher, launcher, start_launcher  # noqa: F401 (fixtures)
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

# Answered promptly: well under this, with the slow connections open.
PROMPT_S = 2.0


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


class SlowSockets(list[socket.socket]):
    """The slow connections, and how many bytes of `head` each has been sent so far."""

    rounds = 0

    def trickling(self) -> None:
        """Wait until every connection has sent bytes past `at_once`: the server holds them all."""
        wait_for(lambda: self.rounds >= 2, 30, 0.05, "every slow connection trickling")


@contextmanager
def slow_heads(port: int, connections: int, byte_every_s: float = 0.5, at_once: bytes = b"",
               head: bytes = SLOW_HEAD) -> Iterator[SlowSockets]:
    """Open connections that each send at_once, then head one byte per byte_every_s, never finishing it."""
    sockets = SlowSockets(socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections))
    for sock in sockets:
        sock.sendall(at_once)
    stop = threading.Event()

    def trickle() -> None:
        sent = 0
        while not stop.is_set():
            byte = head[sent:sent + 1] or b"a"
            for sock in sockets:
                try:
                    sock.sendall(byte)
                except OSError:
                    pass  # closed by the server: the test says whether that was right
            sent += 1
            sockets.rounds = sent
            stop.wait(byte_every_s)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield sockets
    finally:
        stop.set()
        thread.join(timeout=10)
        for sock in sockets:
            sock.close()


def _timed(request: Callable[[], requests.Response]) -> float:
    started = time.monotonic()
    response = request()
    assert response.status_code == 200, response.text[:500]
    return time.monotonic() - started


def _slow_answers_meanwhile(launcher: Launcher, seconds: float = 7) -> list[tuple[str, float]]:  # noqa: F811
    """Time /healthz and /v1/jobs for `seconds`, twice a second; return those that took PROMPT_S or more."""
    deadline = time.monotonic() + seconds
    durations: list[tuple[str, float]] = []
    while time.monotonic() < deadline:
        for path in ("/healthz", "/v1/jobs"):
            try:
                took = _timed(lambda path=path: requests.get(launcher.base_url + path, timeout=10))
            except requests.Timeout:
                took = float("inf")
            durations.append((path, took))
        time.sleep(0.5)  # the sampling interval of the probe, not a wait for something
    return [(path, took) for path, took in durations if took >= PROMPT_S]


@pytest.mark.parametrize("connections", [8, 32])
def test_slow_request_heads_do_not_stop_other_requests(launcher: Launcher, connections: int) -> None:  # noqa: F811
    launcher.wait_healthy()
    with slow_heads(launcher.port, connections) as slow_sockets:
        slow_sockets.trickling()
        # Past gunicorn's 5 s wait for a connection's first data, and several times over.
        slow = _slow_answers_meanwhile(launcher)
    assert not slow, f"requests that took {PROMPT_S} s or more: {slow}\n{launcher.output()}"


def test_a_request_head_that_never_ends_is_answered_408_and_closed(launcher: Launcher) -> None:  # noqa: F811
    launcher.wait_healthy()
    started = time.monotonic()
    with slow_heads(launcher.port, 1) as (sock,):
        sock.settimeout(60)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:500]
    assert b"application/problem+json" in answer and b"within 10 s" in answer, answer
    assert b"X-Content-Type-Options: nosniff" in answer, answer  # as every answer of the API says
    assert 9 < took < 30, took


def test_a_request_head_over_a_mebibyte_is_answered_431(launcher: Launcher) -> None:  # noqa: F811
    launcher.wait_healthy()
    with socket.create_connection(("127.0.0.1", launcher.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Filler: " + b"a" * (1 << 20))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:500]
    assert b"application/problem+json" in answer, answer
    # The front answers a well-formed request as before, on a new connection.
    assert requests.get(launcher.base_url + "/healthz", timeout=10).status_code == 200


# --- request bodies ---------------------------------------------------------------------------

MEBIBYTE = 1024 * 1024


def _blobs_csv_bytes(rows: int = 40_000) -> bytes:
    """A classification CSV of a few MiB: well over the 1 MiB the front keeps in memory."""
    rng = np.random.default_rng(0)
    lines = ["x1,x2,x3,x4,label"]
    for row in range(rows):
        label = row % 2
        values = rng.normal(label * 3.0, 1.0, 4)
        lines.append(",".join(f"{value:.12f}" for value in values) + f",c{label}")
    return ("\n".join(lines) + "\n").encode()


def _dataset_upload(csv: bytes) -> tuple[bytes, str]:
    """A multipart body for POST /v1/datasets, and its Content-Type."""
    return encode_multipart_formdata({"file": ("blobs.csv", csv, "text/csv"), "target": "label",
                                      "task": "classification"})


def _answer(sock: socket.socket) -> bytes:
    """Read until the server closes."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _problem(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def test_slow_uploads_over_a_mebibyte_do_not_stop_other_requests(launcher: Launcher) -> None:  # noqa: F811
    launcher.wait_healthy()
    # A multipart upload, so that the API reads its body (in one of gunicorn's threads, were it let through).
    upload_head = (f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {2 * MEBIBYTE}\r\n\r\n"
                   f'--b\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n').encode()
    with slow_heads(launcher.port, 8, at_once=upload_head, head=b"x1,label\n") as slow_sockets:
        slow_sockets.trickling()  # every upload has sent its head and the start of its body
        slow = _slow_answers_meanwhile(launcher)
    assert not slow, f"requests that took {PROMPT_S} s or more: {slow}\n{launcher.output()}"


def test_a_body_that_pauses_past_BODY_IDLE_S_is_answered_408(  # noqa: N802 (the setting's name)
        start_launcher: Callable[..., Launcher]) -> None:  # noqa: F811
    idle_launcher = start_launcher({"BODY_IDLE_S": "2"})
    idle_launcher.wait_healthy()
    with socket.create_connection(("127.0.0.1", idle_launcher.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                     b"Content-Length: 100\r\n\r\nx1,label\n")
        started = time.monotonic()
        answer = _answer(sock)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:500]
    assert "paused for more than 2 s (BODY_IDLE_S)" in _problem(answer)["detail"], answer
    assert 1.5 < took < 6, took
    # A chunked body that pauses is cut off the same way.
    with socket.create_connection(("127.0.0.1", idle_launcher.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n9\r\nx1,label\n\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:500]


def test_uploads_over_a_mebibyte_through_the_front(launcher: Launcher) -> None:  # noqa: F811
    launcher.wait_healthy()
    csv = _blobs_csv_bytes()
    assert len(csv) > 2 * MEBIBYTE
    body, content_type = _dataset_upload(csv)

    # With a Content-Length (spooled to a file past 1 MiB).
    answer = requests.post(launcher.base_url + "/v1/datasets", data=body, timeout=60,
                           headers={"Content-Type": content_type})
    assert answer.status_code == 201, answer.text[:1000]
    assert answer.json()["n_rows"] == 40_000, answer.json()

    # Chunked (requests sends a generator so): de-chunked by the front.
    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start:start + 100_000]

    answer = requests.post(launcher.base_url + "/v1/datasets", data=pieces(), timeout=60,
                           headers={"Content-Type": content_type})
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.status_code == 201, answer.text[:1000]
    assert answer.json()["n_rows"] == 40_000, answer.json()

    # `Expect: 100-continue` (curl sends it for a large body): the front says 100 Continue.
    with socket.create_connection(("127.0.0.1", launcher.port), timeout=60) as sock:
        sock.sendall((f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                      f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(body)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:1000]
    assert b"100 Continue" not in answer  # once only, from the front


def test_an_over_limit_content_length_is_answered_413_before_the_body(launcher: Launcher) -> None:  # noqa: F811
    launcher.wait_healthy()
    limit_mb = setting_default("MAX_UPLOAD_MB")
    expected = {"type": "about:blank", "title": "Request Entity Too Large", "status": 413,
                "detail": f"the request body is larger than MAX_UPLOAD_MB ({limit_mb} MB)"}  # as the API's own
    for expect in (b"", b"Expect: 100-continue\r\n"):
        with socket.create_connection(("127.0.0.1", launcher.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n"
                         + f"Content-Length: {limit_mb * MEBIBYTE + 1}\r\n".encode() + expect + b"\r\n")
            started = time.monotonic()
            answer = _answer(sock)  # no byte of the body sent
        assert time.monotonic() - started < 5
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:500]  # no 100 Continue first
        assert b"application/problem+json" in answer, answer
        assert _problem(answer) == expected, answer


# --- the front alone, with an upstream of the test's own ---------------------------------------


def _launcher_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_embedded", LAUNCHER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(tmp_path: Path) -> None:
    upstream = tmp_path / "api.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(upstream))
    server.listen()
    upstream_gone: list[float] = []

    def huge_answer() -> None:
        connection, _ = server.accept()
        with connection:
            while b"\r\n\r\n" not in connection.recv(65536):
                pass
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            try:
                while True:
                    connection.sendall(b"x" * 65536)
            except OSError:
                upstream_gone.append(time.monotonic())

    thread = threading.Thread(target=huge_answer, daemon=True)
    thread.start()
    front = _launcher_module().Front(free_port(), str(upstream), tmp_path, MEBIBYTE, send_timeout_s=1.0)
    front.start()
    try:
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            started = time.monotonic()
            thread.join(timeout=15)  # the client reads nothing
            assert upstream_gone, "the front still holds the API's connection for a client that reads nothing"
            assert upstream_gone[0] - started < 10
    finally:
        front.stop()
        server.close()


def test_past_the_connection_cap_a_new_connection_is_answered_503(tmp_path: Path) -> None:
    front = _launcher_module().Front(free_port(), str(tmp_path / "none.sock"), tmp_path, MEBIBYTE, max_connections=4)
    front.start()
    try:
        with slow_heads(front.port, 4, byte_every_s=0.2):
            time.sleep(0.5)
            with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = _answer(sock)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:500]
            assert b"Retry-After: 1" in answer and b"application/problem+json" in answer, answer
        time.sleep(0.5)  # the slow connections closed: room again (the API is absent here: a 502)
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _answer(sock).startswith(b"HTTP/1.1 502 ")
    finally:
        front.stop()


def test_the_front_starts_while_the_callers_thread_runs_an_event_loop(tmp_path: Path) -> None:
    # Playwright's sync API (the dashboard tests) keeps a loop running in the main thread.
    def start_and_stop() -> None:
        front = _launcher_module().Front(free_port(), str(tmp_path / "none.sock"), tmp_path, MEBIBYTE)
        front.start()
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _answer(sock).startswith(b"HTTP/1.1 502 ")  # no API behind it here
        front.stop()

    async def inside_a_loop() -> None:
        start_and_stop()

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none runs here: run one
        asyncio.run(inside_a_loop())
    else:  # in the whole suite, Playwright's already runs in this thread
        start_and_stop()

"""`make run` with clients that send their request heads a byte at a time (slowloris), on loopback.

gunicorn's gthread worker reads a request in one of its `--threads` once the
first byte arrived, so eight such connections used to stop every request. The
launcher now reads each request head whole before the API sees it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.e2e.test_run_embedded import Launcher, launcher, start_launcher  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

# Answered promptly: well under this, with the slow connections open.
PROMPT_S = 2.0


@contextmanager
def slow_heads(port: int, connections: int, byte_every_s: float = 0.5) -> Iterator[list[socket.socket]]:
    """Open connections that each send a request head one byte per byte_every_s, never finishing it."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(connections)]
    stop = threading.Event()

    def trickle() -> None:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        sent = 0
        while not stop.is_set():
            byte = head[sent:sent + 1] or b"a"
            for sock in sockets:
                try:
                    sock.sendall(byte)
                except OSError:
                    pass  # closed by the server: the test says whether that was right
            sent += 1
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


@pytest.mark.parametrize("connections", [8, 32])
def test_slow_request_heads_do_not_stop_other_requests(launcher: Launcher, connections: int) -> None:  # noqa: F811
    launcher.wait_healthy()
    with slow_heads(launcher.port, connections):
        time.sleep(1.0)  # every slow connection has sent its first bytes
        # Past gunicorn's 5 s wait for a connection's first data, and several times over.
        deadline = time.monotonic() + 7
        durations: list[tuple[str, float]] = []
        while time.monotonic() < deadline:
            for path in ("/healthz", "/v1/jobs"):
                try:
                    took = _timed(lambda path=path: requests.get(launcher.base_url + path, timeout=10))
                except requests.Timeout:
                    took = float("inf")
                durations.append((path, took))
            time.sleep(0.5)
    slow = [(path, took) for path, took in durations if took >= PROMPT_S]
    assert not slow, f"{len(slow)} of {len(durations)} requests took {PROMPT_S} s or more: {slow}\n{launcher.output()}"


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

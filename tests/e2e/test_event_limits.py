"""Live-event streams cannot exhaust a real API: gunicorn as compose runs it, AUTH on, several tenants.

One gunicorn worker process (API_WORKERS=1) with compose's threads, so that the
per-process counts are those of the one process every connection reaches. No Celery
worker: the jobs stay queued, and their streams stay open (heartbeats) until the
test closes them. Streams are opened on raw sockets, so that closing one is a real
client going away. Limits at their defaults (service/core/settings.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from service.core.settings import setting_default
from tests.conftest import BLOBS_COLUMNS, blobs_rows
from tests.e2e.conftest import BIN, ROOT, STACK_VARIABLES, Stack, compose_command
from tests.helpers import mlp, wait_for

pytestmark = pytest.mark.slow

PER_TENANT = setting_default("EVENTS_MAX_STREAMS_PER_TENANT")
PER_PROCESS = setting_default("EVENTS_MAX_STREAMS_PER_PROCESS")
KEY_CACHE_TTL_S = setting_default("KEY_CACHE_TTL_S")
TENANTS = ("alice", "bob", "carol", "dave")
# What "promptly" is on a shared 2-core test machine: a plain request well under this.
PROMPT_S = 2.0


class EventsApi:
    """gunicorn alone (migrated, keys created), with a key and a queued job per tenant."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.keys: dict[str, str] = {}
        self.jobs: dict[str, str] = {}

    def get(self, path: str, tenant: str) -> requests.Response:
        return requests.get(self.stack.url(path), headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                            timeout=60)

    def open_stream(self, tenant: str) -> tuple[int, socket.socket, dict[str, Any] | None]:
        """Open a tenant's job's stream on a socket of its own: (status, socket, problem or None).

        A 200 is read up to its first line (`retry:`), and the socket left open.
        """
        sock = socket.create_connection(("127.0.0.1", self.stack.port), timeout=30)
        sock.sendall((f"GET /v1/jobs/{self.jobs[tenant]}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {self.keys[tenant]}\r\nAccept: text/event-stream\r\n\r\n").encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the API closed the connection after {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 200:
            while b"retry:" not in body:
                body += sock.recv(65536)
            return status, sock, None
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += sock.recv(65536)
        sock.close()
        return status, sock, {"retry_after": _header(head, b"retry-after"), **json.loads(body)}

    def open_when_free(self, tenant: str, timeout: float = 30) -> socket.socket:
        """Open a stream, waiting out 429s (slots of streams a previous test closed)."""
        def opened() -> socket.socket | None:
            status, sock, _ = self.open_stream(tenant)
            return sock if status == 200 else None

        return wait_for(opened, timeout, 0.2, f"a stream of {tenant} accepted")


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return None


@pytest.fixture(scope="module")
def events_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EventsApi]:
    workdir = tmp_path_factory.mktemp("event-limits")
    env = {key: value for key, value in os.environ.items() if key not in STACK_VARIABLES and
           not key.startswith("EVENTS_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               DATA_DIR=str(workdir / "data"), AUTH="on")
    stack = Stack("sqlite", workdir, env)
    try:
        # Stack.start() without the Celery worker: migrate, keys, the API.
        assert stack._spawn("migrate", compose_command("migrate")).wait(timeout=120) == 0, stack.log_text()
        api = EventsApi(stack)
        for tenant in TENANTS:
            key = stack.create_key(tenant)
            assert key
            api.keys[tenant] = key
        command = compose_command("api", {"API_WORKERS": "1"})
        command[command.index("--bind") + 1] = f"127.0.0.1:{stack.port}"
        assert command[command.index("--threads") + 1] == "4"  # the budget the defaults are sized for
        stack._spawn("api", command)

        def healthy() -> bool:
            try:
                return requests.get(stack.url("/healthz"), timeout=5).status_code == 200
            except requests.RequestException:
                assert stack.procs["api"].poll() is None, stack.log_text()
                return False

        wait_for(healthy, 90, 0.3, lambda: f"the API up\n{stack.log_text()}")
        for tenant in TENANTS:
            dataset = requests.post(stack.url("/v1/datasets"), timeout=60,
                                    headers={"Authorization": f"Bearer {api.keys[tenant]}"},
                                    json={"columns": BLOBS_COLUMNS, "data": blobs_rows(40)})
            assert dataset.status_code == 201, dataset.text
            job = requests.post(stack.url("/v1/jobs"), timeout=60,
                                headers={"Authorization": f"Bearer {api.keys[tenant]}"},
                                json={"dataset_id": dataset.json()["id"], "network": mlp((4,)),
                                      "training": {"epochs": 2}})
            assert job.status_code == 202, job.text
            api.jobs[tenant] = job.json()["id"]
        yield api
    finally:
        stack.stop()


def test_one_tenant_at_its_stream_cap_leaves_other_tenants_answered_promptly(events_api):
    assert PER_TENANT < PER_PROCESS  # so that one tenant cannot take every stream of a process
    held = [events_api.open_when_free("alice") for _ in range(PER_TENANT)]
    try:
        status, _, refused = events_api.open_stream("alice")
        assert status == 429 and refused, "alice got one stream more than EVENTS_MAX_STREAMS_PER_TENANT"
        assert refused["errors"][0]["field"] == "EVENTS_MAX_STREAMS_PER_TENANT"
        assert refused["retry_after"] and int(refused["retry_after"]) > 0

        # Another tenant still gets a stream, until the process holds its maximum.
        while len(held) < PER_PROCESS:
            held.append(events_api.open_when_free("bob"))
        status, _, refused = events_api.open_stream("carol")
        assert status == 429 and refused and refused["errors"][0]["field"] == "EVENTS_MAX_STREAMS_PER_PROCESS"

        # Every other request of every tenant is answered, and promptly: threads are left for them.
        took = []
        for _ in range(10):
            for tenant in ("bob", "carol"):
                started = time.monotonic()
                response = events_api.get(f"/v1/jobs/{events_api.jobs[tenant]}", tenant)
                took.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
        took.sort()
        print(f"\nwith {len(held)} streams open: plain requests took median {took[len(took) // 2] * 1000:.0f} ms, "
              f"max {took[-1] * 1000:.0f} ms")
        assert took[-1] < PROMPT_S, took
    finally:
        for sock in held:
            sock.close()


def test_a_closed_stream_frees_its_slot_within_seconds(events_api):
    sock = events_api.open_when_free("alice")
    status, _, _ = events_api.open_stream("alice")
    assert status == 429  # at the cap
    sock.close()  # the client goes away without a word
    closed = time.monotonic()
    again = events_api.open_when_free("alice", timeout=30)
    freed_after = time.monotonic() - closed
    again.close()
    print(f"\nthe slot of a closed stream was free again after {freed_after:.2f} s")
    assert freed_after < 5, f"a closed stream held its slot for {freed_after:.1f} s"


def test_a_stream_ends_within_the_key_cache_ttl_when_its_key_is_revoked(events_api):
    sock = events_api.open_when_free("dave")
    listed = subprocess.run([str(BIN / "flask"), "--app", "service", "keys", "list", "--tenant", "dave"],
                            cwd=ROOT, env=events_api.stack.env, capture_output=True, text=True, timeout=120)
    key_id = next(word for word in listed.stdout.split() if word.startswith("key_"))
    revoke = subprocess.run([str(BIN / "flask"), "--app", "service", "keys", "revoke", key_id],
                            cwd=ROOT, env=events_api.stack.env, capture_output=True, text=True, timeout=120)
    assert revoke.returncode == 0, revoke.stderr
    revoked = time.monotonic()
    sock.settimeout(KEY_CACHE_TTL_S + 20)
    rest = b""
    try:
        while chunk := sock.recv(65536):
            rest += chunk
            if rest.endswith(b"0\r\n\r\n"):  # the chunked body's end
                break
    except TimeoutError:
        pytest.fail(f"the stream went on {KEY_CACHE_TTL_S + 20} s after its key was revoked: {rest[-300:]!r}")
    finally:
        sock.close()
    ended_after = time.monotonic() - revoked
    print(f"\nthe stream of a revoked key ended {ended_after:.2f} s after `keys revoke`")
    assert b"revoked" in rest, rest[-300:]
    assert ended_after < KEY_CACHE_TTL_S + 5
    assert events_api.get(f"/v1/jobs/{events_api.jobs['dave']}", "dave").status_code == 401


"""The deployment's reverse proxy: deploy/nginx/default.conf.template in front of the API.

docker-compose.yml's `proxy` service renders that template with envsubst (what the nginx
image does to /etc/nginx/templates/*.template) from its environment. Here Debian's nginx
runs the same file, rendered from the same environment (compose's defaults) with only the
listen and upstream addresses changed, in front of the gunicorn of the e2e stack (compose's
api command). Slow clients are real sockets on loopback, each bounded in time.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.conftest import COMPOSE_FILE, ROOT, Stack, _running_stack, fill_variables, free_port
from tests.helpers import mlp, wait_for

TEMPLATE = ROOT / "deploy" / "nginx" / "default.conf.template"
# Answered promptly: what a normal request through the proxy may take while slow clients hold connections.
PROMPT_S = 2.0
# A request to a stalled gunicorn gives up after this long.
STALLED_S = 3.0
_TEMPLATE_VARIABLE = re.compile(r"\$\{(\w+)\}")


def compose_environment(service: str) -> dict[str, str]:
    """Return a compose service's environment, its ${VAR:-default}s filled in as compose would."""
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    return {name: fill_variables(str(value)) for name, value in spec["services"][service]["environment"].items()}


def render_template(values: dict[str, str]) -> str:
    """Render the proxy's template as the nginx image's envsubst does: ${NAME} for each variable given."""
    text = TEMPLATE.read_text()
    missing = sorted(set(_TEMPLATE_VARIABLE.findall(text)) - set(values))
    assert not missing, f"{TEMPLATE.name} uses variables the proxy service does not set: {missing}"
    return _TEMPLATE_VARIABLE.sub(lambda match: values[match.group(1)], text)


# What the nginx image's /etc/nginx/nginx.conf wraps around conf.d/*.conf, with paths in a temporary prefix.
_MAIN_CONF = """\
{user}
worker_processes 1;
error_log {prefix}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    include {prefix}/default.conf;
}}
"""


class Proxy:
    """Debian's nginx running the deployment's proxy config, as a child process (no daemon)."""

    def __init__(self, binary: str, prefix: Path, stack: Stack, overrides: dict[str, str] | None = None) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.values = {
            **compose_environment("proxy"),
            "BACKPROP_API_UPSTREAM": f"127.0.0.1:{stack.port}",
            "PROXY_LISTEN": f"127.0.0.1:{self.port}",
            # One limit for both, as compose gives both the same MAX_UPLOAD_MB.
            "MAX_UPLOAD_MB": stack.env["MAX_UPLOAD_MB"],
            **(overrides or {}),
        }
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "default.conf").write_text(render_template(self.values))
        # A root master hands its workers to `nobody`, who cannot enter pytest's private temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(_MAIN_CONF.format(prefix=prefix, user=user))
        argv = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                "-g", f"daemon off; pid {prefix / 'nginx.pid'};"]
        self.log = prefix / "nginx.stderr"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._listening, 30, 0.1, lambda: f"nginx listening on {self.port}\n{self.log_text()}")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited {self.proc.returncode}\n{self.log_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log_text(self) -> str:
        parts = [path.read_text(errors="replace")[-4000:] for path in (self.log, self.prefix / "error.log")
                 if path.exists()]
        return "\n".join(parts)

    def url(self, path: str) -> str:
        return self.base_url + path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # nginx's fast shutdown
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class SlowClients:
    """Connections that send `head` at once, then `trickle` one byte at a time, forever (until closed).

    Loopback only, and bounded: the sender thread stops after `max_s` seconds, and leaving the
    `with` block closes every socket. `closed_after` records, per connection, the seconds from
    its opening to the moment the server closed it (or answered it, which is the same here).
    """

    def __init__(self, port: int, count: int, head: bytes, trickle: bytes, interval_s: float = 0.2,
                 max_s: float = 120.0) -> None:
        self.port, self.count, self.head, self.trickle = port, count, head, trickle
        self.interval_s, self.max_s = interval_s, max_s
        self.sockets: list[socket.socket] = []
        self.opened: list[float] = []
        self.closed_after: dict[int, float] = {}
        self.trickled: dict[int, int] = {}  # per connection, the bytes of `trickle` sent so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> SlowClients:
        self.add(self.count)
        self._thread.start()
        return self

    def add(self, count: int) -> None:
        """Open `count` more slow connections."""
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if self.head:
                sock.sendall(self.head)
            self.sockets.append(sock)
            self.opened.append(time.monotonic())

    def _mark_closed(self, index: int) -> None:
        self.closed_after.setdefault(index, time.monotonic() - self.opened[index])

    def _send(self) -> None:
        deadline = time.monotonic() + self.max_s
        position = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            byte = self.trickle[position % len(self.trickle):][:1] if self.trickle else b""
            position += 1
            for index, sock in enumerate(list(self.sockets)):
                if index in self.closed_after:
                    continue
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:  # an answer or the end of the connection: either way it is over
                        self._mark_closed(index)
                        continue
                    if byte:
                        sock.send(byte)
                        self.trickled[index] = self.trickled.get(index, 0) + 1
                except OSError:
                    self._mark_closed(index)
            self._stop.wait(self.interval_s)

    def close_one(self) -> None:
        """Close the first connection still open (the client gives up)."""
        for index, sock in enumerate(self.sockets):
            if index not in self.closed_after:
                self._mark_closed(index)
                sock.close()
                return

    def all_closed(self) -> bool:
        return len(self.closed_after) == len(self.sockets)

    def all_trickling(self) -> None:
        """Wait until every open connection has sent bytes past its head: the server holds them all."""
        wait_for(lambda: all(self.trickled.get(i, 0) >= 2 for i in range(len(self.sockets))
                             if i not in self.closed_after), 30, 0.1, "every slow connection trickling")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def slow_headers(port: int, count: int) -> SlowClients:
    """Slowloris: a request line, then header bytes one at a time, never the blank line that ends them."""
    return SlowClients(port, count, b"", b"GET /healthz HTTP/1.1\r\nHost: slow\r\n" + b"X-Slow: 1\r\n" * 1000)


def slow_bodies(port: int, count: int, api_key: str, trickle: bytes = b"a,b\r\n1,2\r\n") -> SlowClients:
    """Complete headers of an upload, then its body one byte at a time (none at all if `trickle` is empty)."""
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: slow\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: multipart/form-data; boundary=slow\r\nContent-Length: 1000000\r\n\r\n"
            '--slow\r\nContent-Disposition: form-data; name="file"; filename="slow.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n").encode()
    return SlowClients(port, count, head, trickle)


def timed_get(http: requests.Session, url: str, timeout: float) -> tuple[int, float]:
    """GET `url`; return (status, seconds taken)."""
    started = time.monotonic()
    response = http.get(url, timeout=timeout)
    return response.status_code, time.monotonic() - started


def raw_request(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until the server closes; return (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _content_length(data: bytes) -> int:
    match = re.search(rb"(?im)^content-length:\s*(\d+)", data.partition(b"\r\n\r\n")[0])
    return int(match.group(1)) if match else 1 << 62


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx(tool: Callable[[str, str], str]) -> str:
    path = Path("/usr/sbin/nginx")
    return str(path) if path.exists() else tool("nginx", "apt-get install nginx")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The e2e stack on SQLite (compose's api command: gunicorn with threaded workers), AUTH on."""
    with _running_stack("sqlite", tmp_path_factory, "on") as running:
        yield running


@pytest.fixture(scope="module")
def start_proxy(nginx: str, api: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Proxy]]:
    """Return a function that starts nginx with the proxy config (compose's values, or `overrides`)."""
    started: list[Proxy] = []

    def start(**overrides: str) -> Proxy:
        proxy = Proxy(nginx, tmp_path_factory.mktemp("nginx"), api, overrides)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    """nginx with the values compose gives the proxy service."""
    return start_proxy()


# --- tests --------------------------------------------------------------------------------------


def test_template_uses_only_what_the_proxy_service_sets() -> None:
    values = compose_environment("proxy")
    rendered = render_template(values)
    assert "${" not in rendered
    assert f"client_max_body_size {values['MAX_UPLOAD_MB']}m;" in rendered
    assert values["MAX_UPLOAD_MB"] == compose_environment("api")["MAX_UPLOAD_MB"]


@pytest.mark.parametrize("count", [8, 32])
def test_slow_headers_do_not_stall_requests_through_the_proxy(api: Stack, proxy: Proxy, count: int) -> None:
    header_timeout_s = float(proxy.values["PROXY_HEADER_TIMEOUT_S"])
    with slow_headers(proxy.port, count) as slow:
        slow.all_trickling()
        timings = [timed_get(api.http, proxy.url(path), timeout=PROMPT_S * 5)
                   for path in ("/healthz", "/v1/datasets", "/readyz") * 3]
        assert all(status == 200 for status, _ in timings), timings
        slowest = max(seconds for _, seconds in timings)
        assert slowest < PROMPT_S, f"{count} slow clients: {timings}"
        print(f"{count} slow clients: slowest of {len(timings)} requests {slowest:.3f} s")
        assert not slow.closed_after, "the proxy closed a slow client before its header timeout"
        # The header timeout is for the whole header, however steadily its bytes come.
        wait_for(slow.all_closed, header_timeout_s + 30, 0.2,
                 lambda: f"the proxy closing {count} slow clients ({len(slow.closed_after)} closed)")
        assert min(slow.closed_after.values()) >= header_timeout_s - 1, slow.closed_after


def test_slow_headers_stall_gunicorn_itself(api: Stack) -> None:
    """Without the proxy, slowloris takes every gunicorn thread: what the proxy is there for."""
    direct = api.url("/healthz")
    with slow_headers(api.port, 8) as slow:
        stalled_at = None
        # gunicorn's processes accept unevenly: add slow clients until a request gets no answer.
        for _ in range(8):
            time.sleep(1)
            try:
                timed_get(api.http, direct, timeout=STALLED_S)
            except requests.Timeout:
                stalled_at = len(slow.sockets)
                break
            slow.add(8)
        assert stalled_at is not None, f"gunicorn still answered with {len(slow.sockets)} slow clients"
        print(f"gunicorn stopped answering with {stalled_at} slow clients")
    # Once they are gone, it answers again.
    wait_for(lambda: timed_get(api.http, direct, timeout=STALLED_S)[0] == 200, 60, 0.5, "gunicorn answering again")


def test_slow_bodies_are_buffered_and_limited_per_client(api: Stack, proxy: Proxy) -> None:
    limit = int(proxy.values["PROXY_CONNECTIONS_PER_CLIENT"])
    assert api.api_key
    with slow_bodies(proxy.port, limit, api.api_key) as slow:
        slow.all_trickling()

        def refused() -> list[requests.Response]:
            # A list: a Response is falsy when its status is 4xx.
            response = api.http.get(proxy.url("/v1/datasets"), timeout=PROMPT_S * 5)
            return [response] if response.status_code == 429 else []

        # One address with `limit` requests in progress gets a problem for the next one.
        (response,) = wait_for(refused, 30, 0.5, lambda: (
            f"a 429 past {limit} connections from one address (closed: {slow.closed_after})\n{proxy.log_text()}"))
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["status"] == 429 and "Retry-After" in response.headers
        # More slow uploads than gunicorn has threads: the proxy holds them, gunicorn answers the rest.
        slow.close_one()
        wait_for(lambda: api.http.get(proxy.url("/v1/datasets"), timeout=PROMPT_S * 5).status_code == 200, 30, 0.5,
                 "a request answered once one slow upload has gone")
        status, seconds = timed_get(api.http, proxy.url("/v1/datasets"), timeout=PROMPT_S * 5)
        assert status == 200 and seconds < PROMPT_S, (status, seconds)
        assert not slow.closed_after.keys() - {0}, slow.closed_after


def test_a_stopped_body_times_out(api: Stack, start_proxy: Callable[..., Proxy]) -> None:
    body_timeout_s = 2
    quick = start_proxy(PROXY_BODY_TIMEOUT_S=str(body_timeout_s))
    assert api.api_key
    with slow_bodies(quick.port, 1, api.api_key, trickle=b"") as slow:  # headers, then nothing
        wait_for(slow.all_closed, body_timeout_s + 30, 0.2, "the proxy ending an upload whose body stopped")
        assert slow.closed_after[0] >= body_timeout_s - 1, slow.closed_after


def test_upload_through_the_proxy(api: Stack, proxy: Proxy, tmp_path: Path) -> None:
    # Larger than the proxy's memory buffer for a body: it goes through a temporary file.
    rows = 300_000
    path = tmp_path / "big.csv"
    path.write_text("x,y\n" + "".join(f"{i % 97},{i % 2}\n" for i in range(rows)))
    assert path.stat().st_size > 1024 * 1024
    with path.open("rb") as file:
        response = api.http.post(proxy.url("/v1/datasets"), files={"file": (path.name, file, "text/csv")},
                                 data={"name": "through-proxy", "target": "y"}, timeout=120)
    assert response.status_code == 201, response.text
    assert response.json()["n_rows"] == rows
    assert "a client request body is buffered to a temporary file" in proxy.log_text()


def test_metrics_are_not_served_through_the_proxy(api: Stack, proxy: Proxy) -> None:
    # Prometheus scrapes the api service inside the deployment's network; the public port has none.
    response = api.http.get(proxy.url("/metrics"), timeout=10)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "api:8000/metrics" in response.json()["detail"]
    assert api.http.get(f"{api.base_url}/metrics", timeout=10).status_code == 200
    assert api.http.get(proxy.url("/healthz"), timeout=10).status_code == 200


def test_too_large_an_upload_gets_the_apis_problem_from_the_proxy(api: Stack, proxy: Proxy) -> None:
    too_large = int(api.env["MAX_UPLOAD_MB"]) * 1024 * 1024 + 1
    request = (f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.api_key}\r\n"
               "Content-Type: multipart/form-data; boundary=x\r\n"
               f"Content-Length: {too_large}\r\nConnection: close\r\n\r\n").encode()
    status, headers, body = raw_request(proxy.port, request)
    assert status == 413 and headers["content-type"] == "application/problem+json", (status, headers, body)
    direct_status, direct_headers, direct_body = raw_request(api.port, request)
    assert direct_status == 413, (direct_status, direct_body)
    assert json.loads(body) == json.loads(direct_body)


def test_events_arrive_through_the_proxy_as_they_happen(api: Stack, proxy: Proxy, pets: dict[str, Any]) -> None:
    with pets["csv"].open("rb") as file:
        dataset = api.http.post(proxy.url("/v1/datasets"), files={"file": ("pets.csv", file, "text/csv")},
                                data={"name": "pets-proxy", "target": "animal"}, timeout=60).json()
    # Long enough to be cancelled while it trains (no early stop).
    training = {"epochs": 100_000, "early_stopping_patience": 0, "seed": 0}
    job = api.http.post(proxy.url("/v1/jobs"), timeout=60,
                        json={"dataset_id": dataset["id"], "network": mlp(), "training": training}).json()
    try:
        with api.http.get(proxy.url(f"/v1/jobs/{job['id']}/events"), stream=True, timeout=120) as response:
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"].startswith("text/event-stream")
            for line in response.iter_lines(decode_unicode=True):
                if line == "event: epoch":
                    break
            # The first epoch came while the job trains on: the proxy did not wait for the stream's end.
            status = api.http.get(proxy.url(f"/v1/jobs/{job['id']}"), timeout=30).json()["status"]
            assert status == "running", status
    finally:
        api.http.post(proxy.url(f"/v1/jobs/{job['id']}/cancel"), timeout=30)
    assert api.wait_job(job["id"])["status"] == "cancelled"


def test_an_api_that_does_not_answer_is_a_problem_from_the_proxy(start_proxy: Callable[..., Proxy]) -> None:
    orphan = start_proxy(BACKPROP_API_UPSTREAM=f"127.0.0.1:{free_port()}")  # nothing listens there
    response = requests.get(orphan.url("/healthz"), timeout=30)
    assert response.status_code == 503 and response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 503 and response.headers["Retry-After"] == "5"

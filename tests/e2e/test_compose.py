"""docker-compose.yml is valid and describes the deployment of docs/design.md.

Docker does not run here: Debian's docker-compose validates the file, and the
end-to-end tests run its migrate, api and worker commands as processes, and
tests/e2e/test_proxy.py its proxy's config with Debian's nginx. redis-server runs
here with compose's --requirepass, to check the URLs that carry the password.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from kombu import Connection

from tests.e2e.conftest import free_port
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"postgres", "redis", "migrate", "api", "proxy", "worker", "worker-gpu"}
# The secrets compose requires (no default): what an operator puts in .env.
SECRETS = {"POSTGRES_PASSWORD": "pg-s3cret", "REDIS_PASSWORD": "redis-s3cret"}

DockerCompose = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def docker_compose(tool: Callable[[str, str], str], tmp_path_factory: pytest.TempPathFactory) -> DockerCompose:
    """Return a function that runs Debian's docker-compose on the repository's compose file."""
    binary = tool("docker-compose", "apt-get install docker-compose")
    # An empty env file by default: a developer's .env must not decide what the tests see.
    no_env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    no_env_file.touch()

    def run(*args: str, env: dict[str, str] | None = None,
            env_file: Path = no_env_file) -> subprocess.CompletedProcess[str]:
        """Run docker-compose with `env` alone (default: the secrets) and `env_file`."""
        argv = [binary, "--project-directory", str(ROOT), "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
                *args]
        base = {"PATH": "/usr/bin:/bin"}
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**base, **(SECRETS if env is None else env)})

    return run


@pytest.fixture(scope="module")
def config(docker_compose: DockerCompose) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, variables filled in)."""
    result = docker_compose("--profile", "gpu", "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid(docker_compose: DockerCompose) -> None:
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr
    gpu = docker_compose("--profile", "gpu", "config", "-q")
    assert gpu.returncode == 0, gpu.stderr


def test_default_and_gpu_profiles(docker_compose: DockerCompose, config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES
    profiles = docker_compose("config", "--profiles")
    assert profiles.stdout.split() == ["gpu"]
    assert config["services"]["worker-gpu"]["profiles"] == ["gpu"]
    for name in SERVICES - {"worker-gpu"}:
        assert not config["services"][name].get("profiles"), name


def test_startup_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["postgres"]["volumes"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["flask", "--app", "service", "db", "upgrade"]
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_services_share_one_image_and_the_deployment_urls(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("migrate", "api", "worker", "worker-gpu"):
        service = services[name]
        assert service["build"]["context"] == str(ROOT), name
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
        env = service["environment"]
        assert env["DATABASE_URL"] == (
            f"postgresql+psycopg://backprop:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/backprop"), name
        assert env["CELERY_BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name
    assert services["worker-gpu"]["build"]["args"]["WITH_GPU"] == "true"


def test_deployment_requires_api_keys(config: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker", "worker-gpu"):
        env = config["services"][name]["environment"]
        assert env["AUTH"] == "on", name  # the string, not YAML's boolean
        assert int(env["TENANT_MAX_CONCURRENT_JOBS"]) >= 1 and int(env["TENANT_MAX_STORED_MB"]) >= 1, name


def test_api_runs_gunicorn_with_several_workers(config: dict[str, Any]) -> None:
    api = config["services"]["api"]
    command = api["command"]
    assert command[0] == "gunicorn" and command[-1] == "service:create_app()"
    assert int(command[command.index("--workers") + 1]) > 1
    assert command[command.index("--bind") + 1] == "0.0.0.0:8000"
    assert [str(port) for port in api["expose"]] == ["8000"]


def test_only_the_proxy_publishes_a_port(config: dict[str, Any]) -> None:
    services = config["services"]
    assert [name for name, service in services.items() if service.get("ports")] == ["proxy"]
    proxy = services["proxy"]
    (port,) = proxy["ports"]
    assert int(port["target"]) == int(proxy["environment"]["PROXY_LISTEN"]) == 8000
    assert proxy["environment"]["BACKPROP_API_UPSTREAM"] == "api:8000"
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    # A pinned stable nginx, and the body limit the API has.
    assert re.fullmatch(r"nginx:1\.\d*[02468](\.\d+)?-alpine", proxy["image"]), proxy["image"]
    assert proxy["environment"]["MAX_UPLOAD_MB"] == services["api"]["environment"]["MAX_UPLOAD_MB"]
    for variable in ("PROXY_HEADER_TIMEOUT_S", "PROXY_BODY_TIMEOUT_S", "PROXY_CONNECTIONS_PER_CLIENT"):
        assert int(proxy["environment"][variable]) >= 1, variable


def test_the_proxy_config_is_mounted_read_only(config: dict[str, Any]) -> None:
    (volume,) = config["services"]["proxy"]["volumes"]
    source, target, mode = volume.split(":") if isinstance(volume, str) else (
        volume["source"], volume["target"], "ro" if volume.get("read_only") else "rw")
    assert target == "/etc/nginx/templates" and mode == "ro", volume
    # The nginx image renders each *.template there into conf.d/ (tests/e2e/test_proxy.py runs it).
    assert (Path(source) / "default.conf.template").is_file(), source
    assert Path(source) == ROOT / "deploy" / "nginx"


def test_workers_listen_on_their_queue_with_blas_threads_set(config: dict[str, Any]) -> None:
    for name, queue, device in (("worker", "cpu", "cpu"), ("worker-gpu", "gpu", "gpu")):
        service = config["services"][name]
        command = service["command"]
        assert command[:3] == ["celery", "-A", "workers"] and command[command.index("-Q") + 1] == queue, name
        env = service["environment"]
        assert env["WORKER_DEVICE"] == device, name
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            assert int(env[variable]) >= 1, (name, variable)
    devices = config["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_no_secret_is_committed(docker_compose: DockerCompose) -> None:
    raw = COMPOSE_FILE.read_text()
    # Passwords only appear as ${POSTGRES_PASSWORD:?...} or ${REDIS_PASSWORD:?...}: required, no default.
    secrets = re.compile(r"\$\{(POSTGRES_PASSWORD|REDIS_PASSWORD):\?[^}]+\}")
    for line in raw.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if "PASSWORD" in line or "://" in line and "@" in line or "requirepass" in line:
            assert secrets.search(line), line
            assert "PASSWORD:-" not in line and "PASSWORD}" not in line, line
    given = docker_compose("config")
    assert given.returncode == 0, given.stderr
    for value in SECRETS.values():
        assert value in given.stdout


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret(docker_compose: DockerCompose, missing: str) -> None:
    env = {name: value for name, value in SECRETS.items() if name != missing}
    result = docker_compose("config", "-q", env=env)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr, result.stderr
    # An empty value is refused too (`:?`), as a forgotten `POSTGRES_PASSWORD=` line would be.
    empty = docker_compose("config", "-q", env={**env, missing: ""})
    assert empty.returncode != 0, empty.stdout


def test_redis_requires_its_password(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    # The healthcheck's redis-cli authenticates with REDISCLI_AUTH, and checks for the answer.
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]
    assert "PONG" in " ".join(redis["healthcheck"]["test"])


def test_image_holds_what_the_commands_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for path in ("backprop", "service", "workers", "migrations", "alembic.ini", "pyproject.toml", "README.md"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path
        assert path not in ignored, path
    assert re.search(r"^ARG WITH_GPU=false$", dockerfile, re.MULTILINE)
    assert 'pip install ".[gpu]"' in dockerfile


def test_env_example_lists_the_secrets(docker_compose: DockerCompose, tmp_path: Path) -> None:
    example = ROOT / ".env.example"
    names = {line.partition("=")[0] for line in example.read_text().splitlines() if "=" in line
             and not line.startswith("#")}
    assert set(SECRETS) <= names, names
    # As shipped, the example leaves both empty: a copied .env starts nothing until they are set...
    result = docker_compose("config", "-q", env={}, env_file=example)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr, result.stderr
    # ...and with them filled in, compose accepts the file.
    filled = tmp_path / ".env"
    filled.write_text(example.read_text().replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pg-secret\n")
                      .replace("REDIS_PASSWORD=\n", "REDIS_PASSWORD=redis-secret\n"))
    result = docker_compose("config", "-q", env={}, env_file=filled)
    assert result.returncode == 0, result.stderr


def test_the_broker_url_authenticates_to_redis_with_its_password(
        config: dict[str, Any], tool: Callable[[str, str], str], tmp_path: Path) -> None:
    """compose's CELERY_BROKER_URL, pointed at a redis-server run with compose's --requirepass."""
    binary = tool("redis-server", "apt-get install redis-server")
    port = free_port()
    command = config["services"]["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path), "--requirepass", password],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = config["services"]["worker"]["environment"]["CELERY_BROKER_URL"].replace(
            "@redis:6379/", f"@127.0.0.1:{port}/")

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, 30, 0.1, f"redis-server on {port}")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping()
        # What Celery does with it: a message in and out through Kombu's Redis transport.
        with Connection(url, connect_timeout=5) as connection:
            queue = connection.SimpleQueue("compose-auth-check")
            queue.put({"ok": True})
            assert queue.get(timeout=5).payload == {"ok": True}
            queue.close()
    finally:
        server.terminate()
        server.wait(timeout=15)

"""docker-compose.yml is valid and describes the deployment of docs/design.md.

Docker does not run here: Debian's docker-compose validates the file, and the
end-to-end tests run its migrate, api and worker commands as processes.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"postgres", "redis", "migrate", "api", "worker", "worker-gpu"}

DockerCompose = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def docker_compose(tool: Callable[[str, str], str]) -> DockerCompose:
    """Return a function that runs Debian's docker-compose on the repository's compose file."""
    binary = tool("docker-compose", "apt-get install docker-compose")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

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
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0", name
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
    assert any(str(port.get("target") if isinstance(port, dict) else port).endswith("8000") for port in api["ports"])


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
    # Passwords only appear as ${POSTGRES_PASSWORD:-<a default that says it is for development>}.
    for line in raw.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if "PASSWORD" in line or "://" in line and "@" in line:
            assert "${POSTGRES_PASSWORD:-" in line and "dev-only" in line, line
    overridden = docker_compose("config", env={"POSTGRES_PASSWORD": "s3cret", "PATH": "/usr/bin:/bin"})
    assert overridden.returncode == 0, overridden.stderr
    assert "dev-only" not in overridden.stdout


def test_image_holds_what_the_commands_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for path in ("backprop", "service", "workers", "migrations", "alembic.ini", "pyproject.toml", "README.md"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path
        assert path not in ignored, path
    assert re.search(r"^ARG WITH_GPU=false$", dockerfile, re.MULTILINE)
    assert 'pip install ".[gpu]"' in dockerfile

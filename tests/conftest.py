"""Shared fixtures: an app on a temporary DATA_DIR and SQLite, its client, CSV builders,
and the PostgreSQL/Redis helpers (skip when unreachable, fail under BACKPROP_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

POSTGRES_ADMIN_URL = os.environ.get("BACKPROP_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BACKPROP_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(autouse=True)
def _data_dir_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point DATA_DIR at a temporary folder: nothing a test runs (run_job's dataset cache,
    say) writes under the checkout's var/."""
    from service.core.settings import get_settings

    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    get_settings.cache_clear()  # the settings are read once per process: again for this test


def services_required() -> bool:
    """Say whether a missing PostgreSQL/Redis is a failure (CI) rather than a skip."""
    return os.environ.get("BACKPROP_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it where BACKPROP_REQUIRE_SERVICES=1 says the service must be there."""
    if services_required():
        pytest.fail(f"{reason} (BACKPROP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> str:
    """Return the PostgreSQL admin URL, or skip (fail in CI) when it is unreachable."""
    if not _reachable(POSTGRES_ADMIN_URL, 5432):
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
    return POSTGRES_ADMIN_URL


def require_redis() -> str:
    """Return the Redis URL, or skip (fail in CI) when it is unreachable."""
    if not _reachable(REDIS_URL, 6379):
        skip_or_fail(f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


class RecordingQueue:
    """A job publisher for unit tests: records (job_id, queue) instead of sending to a broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.down = False

    def publish(self, job_id: str, queue: str) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.published.append((job_id, queue))

    def ping(self) -> None:
        if self.down:
            raise ConnectionError("broker down")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate one SQLite database per session; each test copies it (faster than migrating)."""
    from service.core.db.engine import upgrade_database

    path = tmp_path_factory.mktemp("template") / "backprop.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Create a fresh PostgreSQL database for the session, migrate it, drop it at the end."""
    admin_url = require_postgres()
    import sqlalchemy as sa

    from service.core.db.engine import normalize_url, upgrade_database

    name = f"backprop_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = normalize_url(admin_url).rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate(url: str) -> None:
    import sqlalchemy as sa

    from service.core.db.engine import make_engine
    from service.core.db.tables import Base

    engine = make_engine(url)
    with engine.begin() as connection:
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        connection.execute(sa.text(f"TRUNCATE {names} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The database the app runs on; tests parametrize it indirectly to add "postgres"."""
    return request.param


@pytest.fixture
def queue() -> RecordingQueue:
    """The recording job publisher injected into the app."""
    return RecordingQueue()


@pytest.fixture
def app(tmp_path: Path, queue: RecordingQueue, backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """An app on a temporary DATA_DIR, SQLite (or PostgreSQL), and the recording queue."""
    from service import create_app

    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
        _truncate(url)
    else:
        template = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp_path / "backprop.db")
        url = f"sqlite:///{tmp_path / 'backprop.db'}"
    app = create_app({"TESTING": True, "DATA_DIR": str(tmp_path), "DATABASE_URL": url,
                      "QUEUE": queue, "UPGRADE_ON_START": False, "MAX_UPLOAD_MB": 2, "AUTH": "on"})
    yield app
    app.extensions["backprop.engine"].dispose()


TENANTS = ("alice", "bob")


@pytest.fixture
def api_keys(app: Any) -> dict[str, str]:
    """Tenants alice and bob with a key each, made the way `keys create` makes them: {tenant: key}."""
    from service.core.db.engine import make_session_factory
    from service.core.tenancy.keys import create_key

    sessions = make_session_factory(app.extensions["backprop.engine"])
    keys = {}
    with sessions() as session:
        for tenant in TENANTS:
            keys[tenant] = create_key(session, tenant)[1]
        session.commit()
    return keys


def client_with_key(app: Any, key: str | None) -> Any:
    """Return a test client that sends `Authorization: Bearer KEY` with every request (none: no header)."""
    test_client = app.test_client()
    if key is not None:
        test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return test_client


@pytest.fixture
def client(app: Any, api_keys: dict[str, str]) -> Any:
    """Flask's test client for the app, sending tenant alice's key."""
    return client_with_key(app, api_keys["alice"])


@pytest.fixture
def bob_client(app: Any, api_keys: dict[str, str]) -> Any:
    """A test client of tenant bob."""
    return client_with_key(app, api_keys["bob"])


@pytest.fixture
def anonymous_client(app: Any) -> Any:
    """A test client that sends no key at all."""
    return client_with_key(app, None)


def csv_text(header: list[str], rows: list[list[Any]], newline: str = "\n") -> str:
    """Build CSV text from a header and rows (values written with str)."""
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    return newline.join(lines) + newline


# The columns of blobs_rows: four numeric features, then the 0/1 label.
BLOBS_COLUMNS = ["a", "b", "c", "d", "label"]


def blobs_rows(n: int = 120, seed: int = 0) -> list[list[Any]]:
    """Two separable classes (0/1) over four numeric features."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        point = rng.normal(loc=3.0 * label, scale=0.5, size=4)
        rows.append([round(float(v), 4) for v in point] + [label])
    return rows


def pets_rows(n: int = 160, seed: int = 0) -> list[list[Any]]:
    """A string target (cat/dog) decided by a categorical feature and a numeric one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dog = i % 2 == 1
        color = ("brown" if rng.random() < 0.8 else "black") if dog else ("grey" if rng.random() < 0.8 else "black")
        weight = round(float(rng.normal(25.0 if dog else 4.0, 2.0)), 2)
        rows.append([weight, color, "dog" if dog else "cat"])
    return rows


def linear_rows(n: int = 200, seed: int = 0) -> list[list[Any]]:
    """price = 1000 + 300 a - 200 b (+ small noise): a regression target far from unit scale."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = rng.normal(size=2)
        rows.append([round(float(a), 4), round(float(b), 4),
                     round(1000 + 300 * float(a) - 200 * float(b) + float(rng.normal(0, 1)), 3)])
    return rows


@pytest.fixture
def upload_csv(client: Any) -> Callable[..., Any]:
    """Return a function that uploads CSV text (or bytes) as multipart and returns the response."""
    import io

    def upload(text: str | bytes, filename: str = "data.csv", **fields: str) -> Any:
        data = text.encode() if isinstance(text, str) else text
        form: dict[str, Any] = {"file": (io.BytesIO(data), filename), **fields}
        return client.post("/v1/datasets", data=form, content_type="multipart/form-data")

    return upload


@pytest.fixture
def blobs(upload_csv: Callable[..., Any]) -> dict[str, Any]:
    """A dataset of 40 blobs_rows, uploaded by tenant alice."""
    return upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(40))).get_json()


@pytest.fixture
def blobs_model(client: Any, app: Any, upload_csv: Callable[..., Any]) -> str:
    """The id of a model trained (as a worker would) for 3 epochs on 60 blobs_rows: 8 tanh units, then 2."""
    from tests.helpers import mlp, train

    dataset = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(60))).get_json()
    return train(client, app, dataset["id"], mlp(activation="tanh"), epochs=3, batch_size=16)

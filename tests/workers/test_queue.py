"""The real publishing path: Celery's send_task by name, JSON, the job id only, routed by device."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_redis


def _received(broker_url: str, queue_name: str) -> list:
    """Drain the messages waiting on a queue with a plain Kombu consumer."""
    from kombu import Connection, Queue

    from service.api.queue import make_celery

    make_celery({"CELERY_BROKER_URL": broker_url})  # sets the SQLAlchemy transport's polling interval
    messages = []
    with Connection(broker_url) as connection:
        queue = Queue(queue_name, routing_key=queue_name)
        with connection.SimpleQueue(queue) as simple:
            while True:
                try:
                    message = simple.get(timeout=1)
                except simple.Empty:
                    break
                messages.append(message)
                message.ack()
    return messages


def _check(messages: list, job_id: str) -> None:
    assert len(messages) == 1
    message = messages[0]
    assert message.content_type == "application/json"
    assert message.headers["task"] == "train_job"
    args = json.loads(message.body)[0] if isinstance(message.body, (str, bytes)) else message.payload[0]
    assert args == [job_id]


def test_make_celery_is_json_only_and_sets_the_polling_interval(tmp_path):
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    from service.api.queue import make_celery
    from service.core.jobs.publishing import SQLA_POLLING_INTERVAL_S

    app = make_celery({"CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}"})
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert app.conf.task_ignore_result is True
    assert kombu_sqlalchemy.Transport.polling_interval == SQLA_POLLING_INTERVAL_S


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_publish_on_the_sqlalchemy_broker(tmp_path, device):
    from service.api.queue import celery_job_queue

    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    queue = celery_job_queue({"CELERY_BROKER_URL": broker})
    queue.ping()
    queue.publish("job_123", device)
    _check(_received(broker, device), "job_123")


def test_publish_on_redis():
    from service.api.queue import celery_job_queue

    url = require_redis()
    broker = f"{url.rstrip('/')}/15"
    queue_name = f"test-{uuid.uuid4().hex[:8]}"
    queue = celery_job_queue({"CELERY_BROKER_URL": broker})
    queue.ping()
    queue.publish("job_456", queue_name)
    _check(_received(broker, queue_name), "job_456")


def test_workers_package_exposes_the_celery_app_with_train_job():

    import workers

    assert workers.celery.main == "backprop"
    assert workers.celery.conf.include == ["workers.tasks"]
    workers.celery.loader.import_default_modules()  # what a starting worker does with `include`
    assert "train_job" in workers.celery.tasks
    assert workers._concurrency(["celery", "-A", "workers", "worker", "--concurrency", "2"]) == 2
    assert workers._concurrency(["celery", "worker", "-c", "3"]) == 3
    assert workers._concurrency(["celery", "worker", "--concurrency=4"]) == 4
    assert workers._concurrency(["celery", "worker"]) is None
    assert "OMP_NUM_THREADS" in __import__("os").environ


def _queue_rows(broker_db: Path) -> list[str]:
    with sqlite3.connect(broker_db) as connection:
        return sorted(name for (name,) in connection.execute("SELECT name FROM kombu_queue"))


def test_db_upgrade_prepares_the_sqlalchemy_broker_so_workers_starting_together_do_not_race(tmp_path):
    """Each process would otherwise insert the "cpu" queue row itself; the loser of that race exits."""
    from service import create_app

    app = create_app({"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'backprop.db'}",
                      "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
                      "UPGRADE_ON_START": False, "AUTH": "off"})
    for _ in range(2):  # idempotent: a second migrate adds nothing
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert _queue_rows(tmp_path / "broker.db") == ["cpu", "gpu"]
    app.extensions["backprop.engine"].dispose()

    # Several consumers declaring their queue at the same moment, as workers do on start.
    start_at = time.time() + 2
    declare = (
        "import sys, time\n"
        "from service.api.queue import make_celery\n"
        f"app = make_celery({{'CELERY_BROKER_URL': 'sqla+sqlite:///{tmp_path / 'broker.db'}'}})\n"
        f"time.sleep(max(0, {start_at} - time.time()))\n"
        "with app.connection_for_write() as c:\n"
        "    c.default_channel.queue_declare(queue='cpu')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", declare], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
    assert _queue_rows(tmp_path / "broker.db") == ["cpu", "gpu"]

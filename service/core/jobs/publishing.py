"""How a job is handed to a worker: Celery's settings, the task's name, and the publisher.

Celery itself is imported by the edges (service/api/queue.py, workers/app.py), which
build their app from celery_settings() here; this module only names what they share.

The database is the source of truth for every job (docs/jobs.md): a message only
says "look at job X". Celery delivers it at least once, so each setting below is
chosen for a worker that may be killed, a broker that may restart or lose its
data, and a message that may arrive twice.
"""

from __future__ import annotations

from typing import Any, Protocol

from kombu import Connection

from service.core.settings import DEVICES, setting_default

TRAIN_TASK = "train_job"
# Kombu's SQLAlchemy transport passes transport options to create_engine, so its
# polling interval can only be set on the transport class; 0.1 s gets a task to an
# idle embedded worker well within half a second.
SQLA_POLLING_INTERVAL_S = 0.1


def redis_transport_options(visibility_timeout_s: float) -> dict[str, Any]:
    """Return Kombu's Redis transport options for a visibility timeout.

    Kombu 5.7's Redis transport reads `visibility_timeout` from the transport
    options only (celery/backends/redis.py reads result_backend_transport_options,
    but there is no result backend here). Unacknowledged messages older than it
    are restored by a sweep every `unacked_restore_interval` x
    `unacked_restore_throttle` seconds (10 x 10 by default), so a short timeout
    needs a short sweep or it would not take effect for minutes.
    """
    timeout = max(1, int(round(visibility_timeout_s)))
    return {
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1, min(10, timeout // 4)),
        "unacked_restore_throttle": 1 if timeout <= 300 else 10,
    }


def celery_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Return the Celery app's settings: JSON only, no result backend (the database holds job state)."""
    broker = config["CELERY_BROKER_URL"]
    transport_options: dict[str, Any] = {}
    if broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as kombu_sqlalchemy

        kombu_sqlalchemy.Transport.polling_interval = SQLA_POLLING_INTERVAL_S
    elif broker.startswith(("redis://", "rediss://", "redis+socket://")):
        # A job outliving the visibility timeout is delivered again (celery#5935);
        # harmless, since the second delivery finds the lease held and does not train.
        transport_options = redis_transport_options(
            float(config.get("VISIBILITY_TIMEOUT_S", setting_default("VISIBILITY_TIMEOUT_S"))))
    return dict(
        broker_url=broker,
        # JSON only: a message is a job id, and nothing is ever unpickled.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        broker_transport_options=transport_options,
        # Acknowledge after the task returns, so a worker killed mid-job leaves its
        # message to be delivered again rather than lose it.
        task_acks_late=True,
        # ...and when the pool process dies (kill -9, OOM), hand the message back at
        # once. A poison job cannot loop: the lease's attempt count stops it.
        task_reject_on_worker_lost=True,
        # One job at a time per worker process: a training job is long and CPU-bound,
        # and a prefetched message would wait behind it while another worker idles.
        worker_prefetch_multiplier=1,
        # On a lost broker connection, keep training: the job's state lives in the
        # database, and a late duplicate delivery is refused by the lease. Cancelling
        # (Celery 6's default) would throw away work on every Redis restart.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Start (and keep) retrying when the broker is not up yet, and never give up:
        # a worker that exits while Redis restarts helps no one.
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        timezone="UTC",
        enable_utc=True,
    )




def prepare_broker(config: dict[str, Any]) -> None:
    """Create the SQLAlchemy broker's tables and one row per job queue, before any worker starts.

    Kombu creates them lazily in every process, and a queue's row has a unique name:
    two workers that start together both insert "cpu", the loser gets an IntegrityError
    that Kombu does not catch, and that worker exits (seen in CI with two workers on
    SQLite). The migrate step runs this once, so nothing is left to race over. A Redis
    broker needs nothing.
    """
    if not config["CELERY_BROKER_URL"].startswith("sqla+"):
        return
    settings = celery_settings(config)
    with Connection(settings["broker_url"], transport_options=settings["broker_transport_options"]) as connection:
        channel = connection.default_channel
        for queue in DEVICES:
            channel.queue_declare(queue=queue)


class JobQueue(Protocol):
    """What the API needs from a queue: publish a job id, and say whether it is reachable."""

    def publish(self, job_id: str, queue: str) -> None: ...

    def ping(self) -> None: ...


class CeleryApp(Protocol):
    """The part of a Celery app that publishing uses (Celery itself is the edges' import)."""

    def send_task(self, name: str, args: list[Any], queue: str) -> Any: ...

    def connection_for_write(self) -> Any: ...


class CeleryJobQueue:
    """Publish jobs with Celery's send_task, by name, carrying the job id only."""

    def __init__(self, celery: CeleryApp) -> None:
        self.celery = celery

    def publish(self, job_id: str, queue: str) -> None:
        """Send the train_job task for a committed job row to the cpu or gpu queue."""
        self.celery.send_task(TRAIN_TASK, args=[job_id], queue=queue)

    def ping(self) -> None:
        """Raise when the broker cannot be reached within a few seconds."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

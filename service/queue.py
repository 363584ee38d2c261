"""The Celery app factory and the publisher the API uses to hand jobs to workers."""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

TRAIN_TASK = "train_job"
# Kombu's SQLAlchemy transport passes transport options to create_engine, so its
# polling interval can only be set on the transport class; 0.1 s gets a task to an
# idle embedded worker well within half a second.
SQLA_POLLING_INTERVAL_S = 0.1


def make_celery(config: dict[str, Any]) -> Celery:
    """Create the Celery app: JSON only, no result backend (the database holds job state)."""
    broker = config["CELERY_BROKER_URL"]
    if broker.startswith("sqla+"):
        from kombu.transport import sqlalchemy as kombu_sqlalchemy

        kombu_sqlalchemy.Transport.polling_interval = SQLA_POLLING_INTERVAL_S
    app = Celery("backprop", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        # One job at a time per worker process: a training job is long and CPU-bound.
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        enable_utc=True,
    )
    return app


class JobQueue(Protocol):
    """What the API needs from a queue: publish a job id, and say whether it is reachable."""

    def publish(self, job_id: str, queue: str) -> None: ...

    def ping(self) -> None: ...


class CeleryJobQueue:
    """Publish jobs with Celery's send_task, by name, carrying the job id only."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.celery = make_celery(config)

    def publish(self, job_id: str, queue: str) -> None:
        """Send the train_job task for a committed job row to the cpu or gpu queue."""
        self.celery.send_task(TRAIN_TASK, args=[job_id], queue=queue)

    def ping(self) -> None:
        """Raise when the broker cannot be reached within a few seconds."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)

"""The API's side of the job queue: a Celery app that only publishes (workers/app.py consumes)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.core.jobs.publishing import CeleryJobQueue, celery_settings


def make_celery(config: dict[str, Any]) -> Celery:
    """Create a Celery app with the settings every process shares (service/core/jobs/publishing.py)."""
    app = Celery("backprop", set_as_current=False)
    app.conf.update(celery_settings(config))
    return app


def celery_job_queue(config: dict[str, Any]) -> CeleryJobQueue:
    """Return the publisher the API hands its jobs to."""
    return CeleryJobQueue(make_celery(config))

"""Celery tasks: thin wrappers over plain functions."""

from __future__ import annotations

from service.queue import TRAIN_TASK
from workers import celery


@celery.task(name=TRAIN_TASK, ignore_result=True)
def train_job(job_id: str) -> str:
    """Train the job with this id (the message carries the id only)."""
    # Imported here so that numpy (and CuPy on GPU hosts) load in the training process only.
    from workers.training import run_job

    return run_job(job_id)

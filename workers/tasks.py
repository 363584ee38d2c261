"""Celery tasks: thin wrappers over plain functions."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from service.core.jobs.publishing import TRAIN_TASK
from service.core.statuses import JobStatus
from workers.app import celery, publish_job, shutdown_requested
from workers.lease import default_sessions, fail_queued, record_delivery

log = logging.getLogger(__name__)


@worker_process_init.connect
def _load_training_code(**_kwargs: object) -> None:
    """Load the training code (numpy, CuPy on GPU hosts) in each pool process before its first job."""
    import workers.training  # noqa: F401


@celery.task(name=TRAIN_TASK, ignore_result=True)
def train_job(job_id: str) -> str:
    """Run the job with this id, of whatever kind (the message carries the id only; the name is history)."""
    if shutdown_requested():
        # A stopping worker may still be handed a message: pass it on untouched.
        publish_job(job_id, train_job.request.delivery_info.get("routing_key") or "cpu")
        return JobStatus.QUEUED
    sessions = default_sessions()
    # Counted before anything that could fail to load: the reaper fails a job whose
    # deliveries keep dying before the claim, instead of re-publishing it forever.
    record_delivery(sessions, job_id)
    try:
        # Imported here so that numpy (and CuPy on GPU hosts) load in the training process only.
        from workers.kinds import runner_of
        run_job = runner_of(sessions, job_id)
    except Exception as error:
        log.exception("job %s: the training code failed to load", job_id)
        fail_queued(sessions, job_id, f"the worker could not load its training code "
                                      f"({type(error).__name__}: {error}); the operator must fix "
                                      f"the workers, then submit the job again")
        return JobStatus.FAILED
    return run_job(job_id, sessions=sessions, shutdown=shutdown_requested, publish=publish_job)

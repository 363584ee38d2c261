"""Which function runs a job of each kind (service.core.statuses.JobKind)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.tables import Job
from service.core.statuses import JobKind

Runner = Callable[..., str]


def runner_of(sessions: sessionmaker[Session], job_id: str) -> Runner:
    """Return the function that runs this job: (job_id, sessions=, shutdown=, publish=) -> its status.

    A job whose row is gone gets the training runner, which says so when it cannot claim it.
    """
    with sessions() as session:
        kind = session.scalar(select(Job.kind).where(Job.id == job_id))
    if kind == JobKind.EVALUATE:
        from workers.evaluation import run_evaluation  # noqa: PLC0415 - each kind loads its own code

        return run_evaluation
    if kind == JobKind.BATCH_PREDICT:
        from workers.batch_prediction import run_batch_prediction  # noqa: PLC0415

        return run_batch_prediction
    from workers.training import run_job  # noqa: PLC0415

    return run_job

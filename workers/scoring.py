"""The frame of the jobs that score a stored dataset with a model: evaluations and batch predictions.

They are job rows of another kind (service.core.statuses.JobKind) and get what a
training job gets: the claim, the heartbeat (renewed between passes by
`ScoringJob.check`), the hand-back when the worker stops, the reaper when it dies
(a new attempt scores from the start), the job's time limit. Their result is
written once, with the job's success, in one transaction that holds the lease: a
stale duplicate can never write a second one (docs/jobs.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import backprop
from service.core.data.parsing import ParsedTable
from service.core.data.preprocessing import Preprocessor
from service.core.db.store import load_table
from service.core.db.tables import Dataset, Job, TrainedModel
from service.core.ids import utcnow
from service.core.logs import job_context
from service.core.statuses import JobStatus
from workers.lease import JobSettings, Publish
from workers.training import (
    JobRecorder,
    LeaseLost,
    Outcomes,
    TimeLimitExceeded,
    job_time_left_s,
    json_safe,
    run_leased,
)


class ScoringDataError(Exception):
    """The model cannot score the dataset; the message tells the user what to change."""


class ScoringCancelled(Exception):
    """The job's cancel flag was set."""


@dataclass
class ScoringJob:
    """What a scoring job works with, and how it keeps and gives up its lease."""

    job_id: str
    options: dict[str, Any]  # the request's options (jobs.training)
    model: TrainedModel
    dataset: Dataset
    table: ParsedTable
    preprocessor: Preprocessor
    network: backprop.Network
    recorder: JobRecorder

    def check(self) -> None:
        """Call between passes: renews the heartbeat; raises when the lease, the parent, the time or the worker ends."""
        if self.recorder.should_stop():
            raise ScoringCancelled(self.job_id)

    def succeed(self, result: dict[str, Any], write: Callable[[Session], None] | None = None) -> None:
        """End the job succeeded with `result` in its metrics (and `write`'s rows), only while it is held."""
        recorder = self.recorder
        with recorder.sessions() as session:
            if write is not None:
                write(session)
            done = session.execute(update(Job).where(
                Job.id == self.job_id, Job.owner == recorder.owner, Job.status == JobStatus.RUNNING).values(
                status=JobStatus.SUCCEEDED, metrics=json_safe(result), finished_at=utcnow(),
                heartbeat_at=utcnow())).rowcount
            if not done:
                session.rollback()
                raise LeaseLost(self.job_id)
            session.commit()


Work = Callable[[ScoringJob], None]


def run_scoring_job(job_id: str, work: Work, sessions: sessionmaker[Session] | None = None,
                    owner: str | None = None, settings: JobSettings | None = None,
                    shutdown: Callable[[], bool] | None = None, publish: Publish | None = None) -> str:
    """Claim the job, load its model and dataset, run `work` (which calls `succeed`), map errors to states.

    Returns the job's status as this worker left it ("lost" or "abandoned" when it no
    longer holds it).
    """
    with job_context(job_id):
        return run_leased(job_id, lambda recorder: work(_load(recorder.sessions, job_id, recorder)),
                          SCORING_OUTCOMES, sessions, owner, settings, shutdown, publish)


SCORING_OUTCOMES = Outcomes(cancelled=(ScoringCancelled,), user_errors=(TimeLimitExceeded, ScoringDataError),
                            out_of_memory="the worker ran out of memory scoring the dataset")


def _load(sessions: sessionmaker[Session], job_id: str, recorder: JobRecorder) -> ScoringJob:
    """Read the job, start its time limit, and load its model (network, preprocessing) and dataset."""
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        seconds, error = job_time_left_s(job, recorder.settings) or (None, "")
        if seconds is not None and seconds <= 0:
            raise TimeLimitExceeded(error)
        recorder.set_time_left(seconds, error)
        model = session.get(TrainedModel, job.input_model_id) if job.input_model_id else None
        dataset = session.get(Dataset, job.dataset_id)
        if model is None or dataset is None:
            raise ScoringDataError(f"the {'model' if model is None else 'dataset'} was deleted before the job ran")
        table = load_table(session, dataset)
        session.expunge(model)
        session.expunge(dataset)
        options = dict(job.training or {})
    network = backprop.load(model.definition, model.weights)
    return ScoringJob(job_id, options, model, dataset, table, Preprocessor(model.preprocessing), network, recorder)

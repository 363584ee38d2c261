"""Create the jobs that score a stored dataset with a model: evaluations and batch predictions.

They are job rows of their own kind (statuses.JobKind), so that they get what a
training job gets: the row committed before its id is published, a tenant's job
slot, a lease and the reaper (workers/scoring.py runs them). The model is found by
id (404); the dataset must be the tenant's and hold the model's feature columns,
by name and of the same kind (and, to evaluate, its target columns): a 422 naming
`dataset_id` otherwise, before anything is queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, defer

from service.core.db.tables import Dataset, Job, TrainedModel
from service.core.evaluation.report import column_problems as report_column_problems
from service.core.ids import new_id, utcnow
from service.core.jobs.creation import hold_dataset, publish_committed
from service.core.jobs.publishing import JobQueue
from service.core.problems import ApiError, FieldError, invalid, not_found
from service.core.statuses import ACTIVE_STATUSES, ID_PREFIXES, JobKind, JobStatus
from service.core.tenancy import limits
from service.core.tenancy.ownership import find_owned

# The device scoring runs on: predictions in passes of bounded rows are quick on CPU hosts.
SCORING_DEVICE = "cpu"


def create_scoring_job(session: Session, tenant: str, model_id: str, kind: JobKind, dataset_id: str,
                       options: dict[str, Any], config: Mapping[str, Any], queue: JobQueue) -> Job:
    """Check a scoring request, commit its job row (status queued), then publish it.

    Parameters
    ----------
    model_id
        The model that scores (404 when the tenant has none of that id).
    kind
        JobKind.EVALUATE or JobKind.BATCH_PREDICT.
    dataset_id
        The stored dataset to score.
    options
        The request's other fields, stored in the job's `training` (the worker reads them).
    config, queue
        The settings (tenant limits) and where the job's id is published.

    Raises
    ------
    ApiError
        404 for the model; 422 naming `dataset_id`; 429 when the tenant has no job slot left;
        503 when the queue cannot be reached (the job is then failed).
    """
    model = find_owned(session, TrainedModel, model_id, tenant, options=[defer(TrainedModel.weights)])
    if model is None:
        raise not_found("model", model_id)
    hold_dataset(session, tenant, dataset_id)
    dataset = find_owned(session, Dataset, dataset_id, tenant)
    if dataset is None:
        raise invalid([{"field": "dataset_id", "message": f"no dataset with id {dataset_id!r}"}])
    errors = column_problems(model, dataset, with_targets=kind == JobKind.EVALUATE)
    if errors:
        raise invalid(errors)
    limits.check_job_slot(session, tenant, config)
    limits.check_storage(session, tenant, config, 0)
    features = [f["name"] for f in model.preprocessing["features"]]
    job = Job(id=new_id(ID_PREFIXES[kind]), kind=kind, tenant_id=tenant, status=JobStatus.QUEUED,
              dataset_id=dataset.id, input_model_id=model.id, network=model.definition, training=options,
              device=SCORING_DEVICE, epochs=0, epoch=0, cancel_requested=False, attempt=0, deliveries=0,
              published_at=utcnow(), features=features)
    session.add(job)
    session.commit()
    publish_committed(session, job, queue)
    return job


def column_problems(model: TrainedModel, dataset: Dataset, with_targets: bool) -> list[FieldError]:
    """Return why the model cannot score the dataset: its feature (and target) columns missing or of another kind.

    The rule is service.core.evaluation.report.column_problems, which the workers apply too.
    """
    return report_column_problems(model.preprocessing["features"], model.preprocessing["target"], dataset.columns,
                                  with_targets=with_targets, where=f"dataset {dataset.id}")


def check_model_unused(session: Session, model_id: str) -> None:
    """Raise the 409 problem when a queued or running evaluation or batch prediction uses the model."""
    busy = session.scalar(select(exists().where(Job.input_model_id == model_id, Job.status.in_(ACTIVE_STATUSES))))
    if busy:
        raise ApiError(409, "Conflict", f"model {model_id} is used by a queued or running evaluation or batch "
                                        f"prediction; cancel it or wait for it to end", slug="model-in-use")

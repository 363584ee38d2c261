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
    """Return why the model cannot score the dataset: its feature (and target) columns missing or of another kind."""
    columns = {c["name"]: c for c in dataset.columns}
    wanted = [(f["name"], f["kind"], "feature") for f in model.preprocessing["features"]]
    if with_targets:
        target_kind = "numeric" if model.task == "regression" else None  # labels: numbers or strings
        wanted += [(name, target_kind, "target") for name in model.preprocessing["target"]["names"]]
    errors: list[FieldError] = []
    for name, kind, role in wanted:
        column = columns.get(name)
        if column is None:
            errors.append({"field": "dataset_id", "message": f"the model's {role} column {name!r} is not in "
                                                             f"dataset {dataset.id}"})
        elif column.get("encoded") is False:
            errors.append({"field": "dataset_id", "message": f"column {name!r} of dataset {dataset.id} has too "
                                                             f"many distinct strings to be read"})
        elif role == "target" and column["kind"] == "datetime" or kind is not None and column["kind"] != kind:
            errors.append({"field": "dataset_id", "message": f"column {name!r} is {column['kind']} in dataset "
                                                             f"{dataset.id} but the model's {role} is "
                                                             f"{kind or 'labels'}"})
    return errors


def check_model_unused(session: Session, model_id: str) -> None:
    """Raise the 409 problem when a queued or running evaluation or batch prediction uses the model."""
    busy = session.scalar(select(exists().where(Job.input_model_id == model_id, Job.status.in_(ACTIVE_STATUSES))))
    if busy:
        raise ApiError(409, "Conflict", f"model {model_id} is used by a queued or running evaluation or batch "
                                        f"prediction; wait for it to end", slug="model-in-use")

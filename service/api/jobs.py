"""Jobs: create (validate everything, commit, then publish), list, read, metrics, cancel."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, request, url_for
from sqlalchemy import select, update
from sqlalchemy.orm import defer

import backprop
from backprop.config import TrainingConfig
from service.api.auth import current_tenant
from service.api.common import find_owned, get_or_404, json_body, page, page_args, validate_body
from service.api.db import get_session
from service.api.networks import check_definition, problem_entries
from service.core.db.store import dataset_input_width, paginate
from service.core.db.tables import Dataset, Job, JobEpoch, Network, TrainedModel
from service.core.ids import isoformat, new_id, utcnow
from service.core.jobs import warm_start
from service.core.jobs.publishing import JobQueue
from service.core.problems import ApiError, invalid
from service.core.schemas import JOB_LOSS_FOR_TASK, JobCreate
from service.core.statuses import JobStatus
from service.core.tenancy import limits

log = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def job_json(job: Job) -> dict[str, Any]:
    """Render a job: status, progress, latest metrics, model id, error."""
    return {
        "id": job.id,
        "status": job.status,
        "dataset_id": job.dataset_id,
        "network_id": job.network_id,
        "network": job.network,
        "training": job.training,
        "device": job.device,
        "time_limit_s": job.time_limit_s,
        "init_from_model": job.init_from_model,
        "progress": {"epoch": job.epoch, "epochs": job.epochs},
        "metrics": job.metrics,
        "model_id": job.model_id,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempt": job.attempt,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
    }


def job_queue() -> JobQueue:
    """Return the app's job publisher (Celery's send_task, or what a test injected)."""
    return current_app.extensions["backprop.queue"]


def _training_fields(request_model: JobCreate, dataset: Dataset,
                     source: TrainedModel | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the full training config (the loss following the task when not given) and its problems.

    A warm start (`source`, the model of init_from_model) continues with the model's
    loss and classes.
    """
    warm = source is not None and source.task == dataset.task
    training = request_model.training.model_dump()
    if "loss" not in request_model.training.model_fields_set:
        training["loss"] = source.loss if warm else JOB_LOSS_FOR_TASK[dataset.task]
    loss = training["loss"]
    n_classes = len((source.classes if warm else dataset.classes) or [])
    if backprop.TASK_OF_LOSS[loss] != dataset.task:
        good = ", ".join(k for k, v in backprop.TASK_OF_LOSS.items() if v == dataset.task)
        return training, [{"field": "training.loss",
                           "message": f"{loss} does not fit a {dataset.task} dataset; use {good}"}]
    if loss == "binary_cross_entropy" and n_classes != 2:
        return training, [{"field": "training.loss", "message": f"binary_cross_entropy needs two classes; "
                                                                f"the dataset has {n_classes}; use cross_entropy"}]
    try:
        # The engine's own check, so the worker can never reject what the API accepted.
        return TrainingConfig.from_dict(training).to_dict(), []
    except backprop.ConfigError as error:
        return training, problem_entries(error.problems, "training")


@bp.post("")
def create_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Validate a job, commit its row, then publish its id to the cpu or gpu queue."""
    request_model = validate_body(JobCreate, json_body())
    body = request.get_json()
    with get_session() as session:
        tenant = current_tenant()
        dataset = find_owned(session, Dataset, request_model.dataset_id)
        if dataset is None:
            raise invalid([{"field": "dataset_id",
                            "message": f"no dataset with id {request_model.dataset_id!r}"}])
        source = None
        if request_model.init_from_model is not None:
            source = find_owned(session, TrainedModel, request_model.init_from_model,
                                options=[defer(TrainedModel.weights)])
            if source is None:
                raise invalid([{"field": "init_from_model",
                                "message": f"no model with id {request_model.init_from_model!r}"}])
        if request_model.network_id is not None:
            network = find_owned(session, Network, request_model.network_id)
            if network is None:
                raise invalid([{"field": "network_id",
                                "message": f"no network with id {request_model.network_id!r}"}])
            definition = network.definition
        elif request_model.network is not None:
            definition = {k: v for k, v in body["network"].items() if k != "name"}
        else:  # a warm start without a network: the model's own
            definition = warm_start.model_network(source)
        warm = [] if source is None else warm_start.check_data(source, dataset)
        training, errors = _training_fields(request_model, dataset, source)
        if source is not None and not errors:
            warm += warm_start.check_loss(source, training["loss"])
        # A warm start encodes the data with the model's preprocessing: the model's widths apply.
        input_dim = dataset_input_width(dataset) if source is None else warm_start.model_input_width(source)
        classes = dataset.classes if source is None else source.classes
        # Without a valid loss the output width is unknown; check the rest of the network anyway.
        output_dim = None if errors or warm else backprop.output_width(
            training["loss"], n_classes=len(classes or []) or None, n_targets=len(dataset.targets))
        network_problems = check_definition(definition, input_dim, output_dim)
        errors += problem_entries(network_problems, "network")
        if source is not None and not network_problems:
            warm += warm_start.check_parameters(source, definition)
        errors += warm
        if errors:
            raise invalid(errors)
        # A valid job may still be one too many, or add a model to a tenant out of room.
        limits.check_job_slot(session, tenant, current_app.config)
        limits.check_storage(session, tenant, current_app.config, 0)
        job = Job(id=new_id("job"), tenant_id=tenant, status="queued", dataset_id=dataset.id,
                  network_id=request_model.network_id, network=definition, training=training,
                  device=request_model.device, epochs=training["epochs"], epoch=0,
                  cancel_requested=False, attempt=0, deliveries=0, published_at=utcnow(),
                  time_limit_s=request_model.time_limit_s, init_from_model=request_model.init_from_model)
        session.add(job)
        session.commit()
    # Published only after the commit: a worker must always find the row it is handed.
    try:
        job_queue().publish(job.id, job.device)
    except Exception as error:  # the broker is down or refuses: say so, do not leave a ghost job
        log.exception("could not publish job %s", job.id)
        with get_session() as session:
            session.execute(update(Job).where(Job.id == job.id, Job.status == "queued").values(
                status="failed", finished_at=utcnow(),
                error=f"the job queue could not be reached ({type(error).__name__}); "
                      f"check the broker and submit the job again"))
            session.commit()
        raise ApiError(503, "Service Unavailable", f"job {job.id} could not be queued: the broker "
                                                   f"is unreachable", slug="broker-unavailable") from None
    location = url_for("jobs.get_job", job_id=job.id)
    return job_json(job), 202, {"Location": location}


@bp.get("")
def list_jobs() -> dict[str, Any]:
    """List jobs, newest first, optionally with one `status`."""
    limit, cursor = page_args()
    status = request.args.get("status")
    statement = select(Job).where(Job.tenant_id == current_tenant())
    if status:
        if status not in tuple(JobStatus):
            raise invalid([{"field": "status", "message": f"must be one of {', '.join(JobStatus)}"}])
        statement = statement.where(Job.status == status)
    with get_session() as session:
        rows, next_cursor = paginate(session, statement, Job.id, limit, cursor)
        return page([job_json(j) for j in rows], next_cursor)


@bp.get("/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    """Read a job from the database (never from a Celery result backend)."""
    with get_session() as session:
        job = get_or_404(session, Job, job_id, "job")
        return job_json(job)


@bp.get("/<job_id>/metrics")
def get_job_metrics(job_id: str) -> dict[str, Any]:
    """Return the per-epoch history with per-layer diagnostics."""
    with get_session() as session:
        job = get_or_404(session, Job, job_id, "job")
        records = session.scalars(select(JobEpoch.record).where(JobEpoch.job_id == job_id)
                                  .order_by(JobEpoch.epoch))
        return {"job_id": job_id, "status": job.status, "epochs": list(records)}


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> tuple[dict[str, Any], int]:
    """Cancel a queued job at once; ask a running one to stop between batches.

    A running job whose worker is gone ends `cancelled` too: the reaper finishes it
    once its lease goes stale (docs/jobs.md).
    """
    with get_session() as session:
        job = get_or_404(session, Job, job_id, "job")  # another tenant's job is not there to cancel
        changed = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
            status=JobStatus.CANCELLED, cancel_requested=True, finished_at=utcnow())).rowcount
        if not changed:
            changed = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                                      .values(cancel_requested=True)).rowcount
        session.commit()
        session.refresh(job)
        if not changed and job.status != JobStatus.CANCELLED:  # cancelling twice is harmless
            raise ApiError(409, "Conflict", f"job {job_id} has already {job.status}; "
                                            f"only queued or running jobs can be cancelled",
                           slug="job-finished")
        return job_json(job), 202

"""Jobs: create (validate everything, commit, then publish), list, read, metrics, cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request, url_for
from sqlalchemy import select

from service.api import responses
from service.api.auth import current_tenant
from service.api.common import MAX_PAGE, cancel_job_row, get_job_or_404, int_arg, json_body, page_args, validate_body
from service.api.db import get_session
from service.core.db.store import paginate
from service.core.db.tables import Job, JobEpoch
from service.core.evaluation.report import without_test_report
from service.core.ids import isoformat
from service.core.jobs import creation
from service.core.jobs.publishing import JobQueue
from service.core.problems import invalid
from service.core.schemas import JobCreate
from service.core.statuses import JobKind, JobStatus

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def job_answer(job: Job) -> responses.Job:
    """Build the answer describing a job: status, progress, latest metrics, model id, error."""
    return responses.Job.model_validate({
        "id": job.id,
        "status": job.status,
        "dataset_id": job.dataset_id,
        "network_id": job.network_id,
        "network": job.network,
        "training": job.training,
        "device": job.device,
        "time_limit_s": job.time_limit_s,
        "init_from_model": job.init_from_model,
        "features": job.features,
        "progress": {"epoch": job.epoch, "epochs": job.epochs},
        "metrics": job.metrics,
        "model_id": job.model_id,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempt": job.attempt,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
    })


def job_json(job: Job) -> dict[str, Any]:
    """Render a job: status, progress, latest metrics, model id, error."""
    return job_answer(job).answer()


def job_queue() -> JobQueue:
    """Return the app's job publisher (Celery's send_task, or what a test injected)."""
    return current_app.extensions["backprop.queue"]


@bp.post("")
def create_job() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Validate a job, commit its row, then publish its id to the cpu or gpu queue."""
    body = json_body()
    request_model = validate_body(JobCreate, body)
    with get_session() as session:
        job = creation.create_job(session, current_tenant(), request_model, current_app.config, job_queue(),
                                  sent_network=body.get("network"))
    location = url_for("jobs.get_job", job_id=job.id)
    return job_json(job), 202, {"Location": location}


@bp.get("")
def list_jobs() -> dict[str, Any]:
    """List jobs, newest first, optionally with one `status`."""
    limit, cursor = page_args()
    status = request.args.get("status")
    statement = select(Job).where(Job.tenant_id == current_tenant(), Job.kind == JobKind.TRAIN)
    if status:
        if status not in tuple(JobStatus):
            raise invalid([{"field": "status", "message": f"must be one of {', '.join(JobStatus)}"}])
        statement = statement.where(Job.status == status)
    with get_session() as session:
        rows, next_cursor = paginate(session, statement, Job.id, limit, cursor)
        items = [job_answer(job).model_copy(update={"metrics": without_test_report(job.metrics)}) for job in rows]
        return responses.JobPage(items=items, next_cursor=next_cursor).answer()


@bp.get("/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    """Read a job from the database (never from a Celery result backend)."""
    with get_session() as session:
        job = get_job_or_404(session, job_id)
        return job_json(job)


@bp.get("/<job_id>/metrics")
def get_job_metrics(job_id: str) -> dict[str, Any]:
    """Return the per-epoch history with per-layer diagnostics, oldest first, a page at a time.

    `cursor` is the last epoch of the previous page (its `next_cursor`). A page holds
    MAX_PAGE records unless `limit` says fewer: a client that reads one page still gets
    the whole history of a job of up to that many epochs, as before pages.
    """
    limit = int_arg("limit", MAX_PAGE, 1, MAX_PAGE)
    assert limit is not None
    cursor = request.args.get("cursor") or None
    after = 0
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 9):
            raise invalid([{"field": "cursor", "message": "must be the next_cursor of the previous page"}])
        after = int(cursor)
    with get_session() as session:
        job = get_job_or_404(session, job_id)
        rows = session.execute(select(JobEpoch.epoch, JobEpoch.record)
                               .where(JobEpoch.job_id == job_id, JobEpoch.epoch > after)
                               .order_by(JobEpoch.epoch).limit(limit + 1)).all()
        next_cursor = str(rows[limit - 1].epoch) if len(rows) > limit else None
        return responses.render(responses.JobMetrics, {
            "job_id": job_id, "status": job.status, "epochs": [row.record for row in rows[:limit]],
            "next_cursor": next_cursor})


@bp.post("/<job_id>/cancel")
def cancel_job(job_id: str) -> tuple[dict[str, Any], int]:
    """Cancel a queued job at once; ask a running one to stop between batches.

    A running job whose worker is gone ends `cancelled` too: the reaper finishes it
    once its lease goes stale (docs/jobs.md).
    """
    with get_session() as session:
        return job_json(cancel_job_row(session, job_id)), 202

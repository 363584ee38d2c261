"""Evaluations: score a stored dataset with a model on the workers; read the report; list a model's; cancel.

An evaluation is a job row of kind `evaluate` (service.core.statuses.JobKind): created
like a training job (checked, committed, then published: service.core.jobs.scoring),
run by workers/evaluation.py, its report in the row's `metrics` once it succeeded
(docs/service.md, "Evaluations"). /v1/jobs does not see it, nor this path a training job.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, url_for
from sqlalchemy import select
from sqlalchemy.orm import defer

from service.api import responses
from service.api.auth import current_tenant
from service.api.common import cancel_job_row, get_job_or_404, get_or_404, json_body, page_args, validate_body
from service.api.db import get_session
from service.api.jobs import job_queue
from service.core.db.store import paginate
from service.core.db.tables import Job, TrainedModel
from service.core.ids import isoformat
from service.core.jobs.scoring import create_scoring_job
from service.core.schemas import EvaluationCreate
from service.core.statuses import JobKind, JobStatus

bp = Blueprint("evaluations", __name__)


def _state(job: Job) -> dict[str, Any]:
    """Return what an evaluation's answer and its list item both say of it."""
    options = job.training  # the request's options, as create_evaluation stored them
    return {
        "id": job.id,
        "model_id": job.input_model_id,
        "dataset_id": job.dataset_id,
        "status": job.status,
        "permutation_repeats": options["permutation_repeats"],
        "seed": options["seed"],
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempt": job.attempt,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
    }


def _report(job: Job) -> dict[str, Any] | None:
    """Return the report: the job's metrics once it succeeded (a failed attempt leaves none)."""
    return job.metrics if job.status == JobStatus.SUCCEEDED else None


def evaluation_json(job: Job) -> dict[str, Any]:
    """Render an evaluation: its status and, once it succeeded, its report."""
    return responses.render(responses.Evaluation, {**_state(job), "report": _report(job)})


def evaluation_summary(job: Job) -> responses.EvaluationSummary:
    """Build an evaluation's list item: the report's metrics instead of the whole report."""
    report = _report(job)
    return responses.EvaluationSummary.model_validate({**_state(job),
                                                       "metrics": report.get("metrics") if report else None})


@bp.post("/v1/models/<model_id>/evaluations")
def create_evaluation(model_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start an evaluation of a model on a stored dataset, run on the workers."""
    request_model = validate_body(EvaluationCreate, json_body())
    options = {"permutation_repeats": request_model.permutation_repeats, "seed": request_model.seed}
    with get_session() as session:
        job = create_scoring_job(session, current_tenant(), model_id, JobKind.EVALUATE, request_model.dataset_id,
                                 options, current_app.config, job_queue())
        answer = evaluation_json(job)
    return answer, 202, {"Location": url_for("evaluations.get_evaluation", evaluation_id=answer["id"])}


@bp.get("/v1/models/<model_id>/evaluations")
def list_evaluations(model_id: str) -> dict[str, Any]:
    """List a model's evaluations, newest first."""
    limit, cursor = page_args()
    with get_session() as session:
        get_or_404(session, TrainedModel, model_id, "model", options=[defer(TrainedModel.weights)])
        statement = select(Job).where(Job.tenant_id == current_tenant(), Job.kind == JobKind.EVALUATE,
                                      Job.input_model_id == model_id)
        rows: list[Job]
        rows, next_cursor = paginate(session, statement, Job.id, limit, cursor)
        return responses.EvaluationPage(items=[evaluation_summary(j) for j in rows],
                                        next_cursor=next_cursor).answer()


@bp.get("/v1/evaluations/<evaluation_id>")
def get_evaluation(evaluation_id: str) -> dict[str, Any]:
    """Read an evaluation: its status and, once it succeeded, its report."""
    with get_session() as session:
        return evaluation_json(get_job_or_404(session, evaluation_id, JobKind.EVALUATE))


@bp.post("/v1/evaluations/<evaluation_id>/cancel")
def cancel_evaluation(evaluation_id: str) -> tuple[dict[str, Any], int]:
    """Cancel a queued evaluation at once; ask a running one to stop between passes.

    A training job's cancel (service.api.common.cancel_job_row): 409 once it succeeded or failed.
    """
    with get_session() as session:
        return evaluation_json(cancel_job_row(session, evaluation_id, JobKind.EVALUATE)), 202

"""Batch predictions: write a stored dataset's rows with a model's predictions on the workers; download the
file; cancel one; delete one and its file.

A batch prediction is a job row of kind `batch_predict` (service.core.statuses.JobKind):
created like a training job (checked, committed, then published: service.core.jobs.scoring),
run by workers/batch_prediction.py, its file stored in `job_output_chunks` with its
success and described by the row's `metrics` (docs/service.md, "Batch predictions"). The
file counts against the tenant's storage until the batch prediction is deleted.
/v1/jobs does not see it, nor this path a training job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, url_for
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from service.api import responses
from service.api.auth import current_tenant
from service.api.common import cancel_hint, cancel_job_row, get_job_or_404, json_body, validate_body
from service.api.db import get_session, get_session_factory
from service.api.jobs import job_queue
from service.core.db.tables import Job, JobOutputChunk
from service.core.ids import isoformat
from service.core.jobs.scoring import create_scoring_job
from service.core.problems import ApiError
from service.core.schemas import BATCH_PREDICTION_FORMAT_DEFAULT, BatchPredictionCreate
from service.core.statuses import ACTIVE_STATUSES, JobKind, JobStatus

bp = Blueprint("batch_predictions", __name__)


def batch_prediction_json(job: Job) -> dict[str, Any]:
    """Render a batch prediction: its status and, once it succeeded, its file's size and download link."""
    options = job.training or {}
    done = job.status == JobStatus.SUCCEEDED
    result = (job.metrics or {}) if done else {}
    return responses.render(responses.BatchPrediction, {
        "id": job.id,
        "model_id": job.input_model_id,
        "dataset_id": job.dataset_id,
        "format": options.get("format", BATCH_PREDICTION_FORMAT_DEFAULT),
        "status": job.status,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempt": job.attempt,
        "n_rows": result.get("n_rows"),
        "size_bytes": result.get("size_bytes"),
        "media_type": result.get("media_type"),
        "sha256": result.get("sha256"),
        "download": url_for("batch_predictions.download_batch_prediction", batch_prediction_id=job.id)
        if done else None,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
    })


@bp.post("/v1/models/<model_id>/batch-predictions")
def create_batch_prediction(model_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a batch prediction of a model on a stored dataset, run on the workers."""
    request_model = validate_body(BatchPredictionCreate, json_body())
    with get_session() as session:
        job = create_scoring_job(session, current_tenant(), model_id, JobKind.BATCH_PREDICT,
                                 request_model.dataset_id, {"format": request_model.format},
                                 current_app.config, job_queue())
        answer = batch_prediction_json(job)
    return answer, 202, {"Location": url_for("batch_predictions.get_batch_prediction",
                                             batch_prediction_id=answer["id"])}


@bp.get("/v1/batch-predictions/<batch_prediction_id>")
def get_batch_prediction(batch_prediction_id: str) -> dict[str, Any]:
    """Read a batch prediction: its status and, once it succeeded, its file's size and download link."""
    with get_session() as session:
        return batch_prediction_json(get_job_or_404(session, batch_prediction_id, JobKind.BATCH_PREDICT))


@bp.post("/v1/batch-predictions/<batch_prediction_id>/cancel")
def cancel_batch_prediction(batch_prediction_id: str) -> tuple[dict[str, Any], int]:
    """Cancel a queued batch prediction at once; ask a running one to stop between chunks.

    A training job's cancel (service.api.common.cancel_job_row): 409 once it succeeded or
    failed. A cancelled one stores no file (its worker removes what it wrote).
    """
    with get_session() as session:
        return batch_prediction_json(cancel_job_row(session, batch_prediction_id, JobKind.BATCH_PREDICT)), 202


@bp.delete("/v1/batch-predictions/<batch_prediction_id>")
def remove_batch_prediction(batch_prediction_id: str) -> Response:
    """Delete a batch prediction and its file, unless it is queued or running (cancel it first)."""
    with get_session() as session:
        job = get_job_or_404(session, batch_prediction_id, JobKind.BATCH_PREDICT)
        # Conditional on the status, so a worker that ends it meanwhile keeps it: its success
        # (file and status, one transaction under the lease) commits first or finds it gone.
        deleted = session.execute(delete(Job).where(Job.id == job.id, Job.status.not_in(ACTIVE_STATUSES))
                                  .execution_options(synchronize_session=False)).rowcount
        if not deleted:
            session.rollback()
            session.refresh(job)
            raise ApiError(409, "Conflict", f"{cancel_hint(job.kind, job.id)} is {job.status}; cancel it first, "
                                            f"then delete it once it has ended", slug="batch-prediction-active")
        # The pieces go with the row (ON DELETE CASCADE); deleted by name too, so that a
        # database without foreign keys enforced keeps none.
        session.execute(delete(JobOutputChunk).where(JobOutputChunk.job_id == job.id))
        session.commit()
    return Response(status=204)


def _pieces(sessions: sessionmaker[Session], job_id: str) -> Iterator[bytes]:
    """Yield the file's stored pieces in order, each read in a short session of its own.

    A session per piece: a download as slow as its client holds no connection (nor, on
    SQLite, a read transaction) between pieces, and memory holds one piece at a time.
    """
    seq = 0
    while True:
        with sessions() as session:
            data = session.scalar(select(JobOutputChunk.data).where(JobOutputChunk.job_id == job_id,
                                                                    JobOutputChunk.seq == seq))
        if data is None:
            return
        yield bytes(data)
        seq += 1


@bp.get("/v1/batch-predictions/<batch_prediction_id>/download")
def download_batch_prediction(batch_prediction_id: str) -> Response:
    """Download a batch prediction's file (CSV or Parquet), streamed; a 409 until it succeeded."""
    with get_session() as session:
        job = get_job_or_404(session, batch_prediction_id, JobKind.BATCH_PREDICT)
        if job.status != JobStatus.SUCCEEDED:
            raise ApiError(409, "Conflict", f"batch prediction {job.id} is {job.status}"
                                            f"{': ' + job.error if job.error else ''}; its file can be "
                                            f"downloaded once it has succeeded", slug="batch-prediction-not-ready")
        result = job.metrics or {}
    fmt = result.get("format", BATCH_PREDICTION_FORMAT_DEFAULT)
    headers = {"Content-Disposition": f'attachment; filename="{batch_prediction_id}.{fmt}"'}
    if "size_bytes" in result:
        headers["Content-Length"] = str(result["size_bytes"])
    if "sha256" in result:
        headers["ETag"] = f'"{result["sha256"]}"'  # the file never changes once stored
    return Response(_pieces(get_session_factory(), batch_prediction_id), headers=headers,
                    mimetype=result.get("media_type", "application/octet-stream"))

"""Helpers shared by the blueprints: JSON bodies, schema validation, paging, a job's lookup and cancel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from flask import current_app, request, url_for
from pydantic import BaseModel, ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from service.api.auth import current_tenant
from service.api.json_provider import JSONTooDeep
from service.core.db.tables import Job
from service.core.ids import utcnow
from service.core.problems import ApiError, from_validation_error, invalid, not_found
from service.core.statuses import JobKind, JobStatus
from service.core.tenancy import ownership
from service.core.tenancy.limits import MB

M = TypeVar("M", bound=BaseModel)
Row = ownership.Row

DEFAULT_PAGE = 50
MAX_PAGE = 1000
# What the API calls a job row of each kind, in its paths' 404s and 409s.
JOB_KIND_NAMES = {JobKind.TRAIN: "job", JobKind.EVALUATE: "evaluation", JobKind.BATCH_PREDICT: "batch prediction"}
# The view (and its id argument) that cancels a job row of each kind.
CANCEL_ENDPOINTS = {JobKind.TRAIN: ("jobs.cancel_job", "job_id"),
                    JobKind.EVALUATE: ("evaluations.cancel_evaluation", "evaluation_id"),
                    JobKind.BATCH_PREDICT: ("batch_predictions.cancel_batch_prediction", "batch_prediction_id")}


def json_body(max_rows: Mapping[str, int] | None = None) -> Any:
    """Return the request's JSON body, or raise a problem saying what is wrong with it.

    The body is read only up to the smaller of MAX_JSON_MB and MAX_UPLOAD_MB: a larger
    Content-Length is a 413 before a byte is read, and a body without one (chunked) is
    read no further than one byte past the limit. `max_rows` ({field: most rows}) bounds the lists of
    the body's top-level fields, counted before anything validates them (a 422 naming
    the field).
    """
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type",
                       f"send application/json (got {request.mimetype or 'no content type'})")
    limited_body("JSON", cache=True)  # kept for get_json
    try:
        body = request.get_json()
    except BadRequest as error:
        # Say where the syntax breaks ("Expecting ',' delimiter: line 1 column 12"): Werkzeug's
        # error has it, and Flask outside debug mode raises a bare one from it.
        cause = error.__cause__ if isinstance(error.__cause__, BadRequest) else error
        if isinstance(cause.__cause__, JSONTooDeep):
            raise ApiError(400, "Bad Request", f"the body is {cause.__cause__}", slug="invalid-json") from None
        reason = str(cause.description).removeprefix("Failed to decode JSON object: ")
        raise ApiError(400, "Bad Request", f"the body is not valid JSON: {reason}"[:300],
                       slug="invalid-json") from None
    if body is None:  # the literal null
        raise invalid([{"field": "", "message": "the body must be a JSON object, not null"}])
    if isinstance(body, dict):
        for field, most in (max_rows or {}).items():
            rows = body.get(field)
            if isinstance(rows, list) and len(rows) > most:
                raise invalid([{"field": field, "message": f"at most {most:,} rows per request"}])
    return body


def limited_body(kind: str, cache: bool = False) -> bytes:
    """Return the request's body, or raise the 413 problem when it is past the bodies' limit.

    The limit is the smaller of MAX_JSON_MB and MAX_UPLOAD_MB: a larger Content-Length is
    a 413 before a byte is read, and a body without one (chunked) is read no further than
    one byte past the limit. `kind` names the body in the problem ("JSON", "CSV"); `cache`
    keeps the body for get_json.
    """
    json_mb, upload_mb = int(config("MAX_JSON_MB")), int(config("MAX_UPLOAD_MB"))
    limit_name, limit_mb = ("MAX_JSON_MB", json_mb) if json_mb <= upload_mb else ("MAX_UPLOAD_MB", upload_mb)
    too_large = ApiError(413, "Request Entity Too Large",
                         f"the {kind} body is larger than {limit_name} ({limit_mb} MB)")
    # One byte more than the limit: Werkzeug cuts a body without Content-Length there,
    # silently, so a body read to that length is known to be too long.
    request.max_content_length = limit_mb * MB + 1
    try:
        data = request.get_data(cache=cache)
    except RequestEntityTooLarge:  # Content-Length says so: nothing was read
        raise too_large from None
    if len(data) > limit_mb * MB:
        raise too_large
    return data


def validate_body(model: type[M], body: Any) -> M:
    """Validate a JSON value with a request schema; a ValidationError becomes a 422."""
    if not isinstance(body, dict):
        raise invalid([{"field": "", "message": "the body must be a JSON object"}])
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise from_validation_error(error) from None


def int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    """Read an integer query parameter within bounds, or raise a 422 naming it."""
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:  # which one was meant is a guess: refuse rather than take the first
        raise invalid([{"field": name, "message": "give it once"}])
    raw = values[0]
    try:
        value = int(raw)
    except ValueError:
        raise invalid([{"field": name, "message": f"must be an integer, not {raw[:50]!r}"}]) from None
    if not low <= value <= high:
        raise invalid([{"field": name, "message": f"must be between {low} and {high:,}"}])
    return value


def page_args() -> tuple[int, str | None]:
    """Return (limit, cursor) of a list request."""
    limit = int_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    assert limit is not None
    return limit, request.args.get("cursor") or None


def config(key: str) -> Any:
    """Return a configuration value of the current app."""
    return current_app.config[key]


def find_owned(session: Session, table: type[Row], row_id: str, **options: Any) -> Row | None:
    """Return the row of `table` with this id when it belongs to the request's tenant, else None.

    Every lookup by id goes through here (or get_or_404), and so through
    service.core.tenancy.ownership: another tenant's row is as absent as a missing one.
    """
    return ownership.find_owned(session, table, row_id, current_tenant(), **options)


def get_or_404(session: Session, table: type[Row], row_id: str, kind: str, **options: Any) -> Row:
    """Return the tenant's row of `table` with this id, or raise the 404 problem naming its kind.

    Another tenant's row gets the very same 404 as a missing id.
    """
    row = find_owned(session, table, row_id, **options)
    if row is None:
        raise not_found(kind, row_id)
    return row


def get_job_or_404(session: Session, job_id: str, kind: JobKind = JobKind.TRAIN, **options: Any) -> Job:
    """Return the tenant's job of `kind` with this id, or raise the 404 problem naming that kind.

    Evaluations and batch predictions are job rows too (statuses.JobKind); under another
    kind's path they are as absent as a missing id.
    """
    name = JOB_KIND_NAMES[kind]
    job = get_or_404(session, Job, job_id, name, **options)
    if job.kind != kind:
        raise not_found(name, job_id)
    return job


def cancel_hint(kind: str, job_id: str) -> str:
    """Name a job row of any kind and how to cancel it, for a 409 it stands behind."""
    endpoint, argument = CANCEL_ENDPOINTS[JobKind(kind)]
    return f"{JOB_KIND_NAMES[JobKind(kind)]} {job_id} (POST {url_for(endpoint, **{argument: job_id})})"


def cancel_job_row(session: Session, job_id: str, kind: JobKind = JobKind.TRAIN) -> Job:
    """Cancel the tenant's job of `kind`: a queued one ends `cancelled` at once, a running one is asked to stop.

    The one cancel of every kind (POST /v1/jobs/{id}/cancel, /v1/evaluations/{id}/cancel,
    /v1/batch-predictions/{id}/cancel). A running job gets `cancel_requested`; its worker
    reads the flag between batches or passes and ends it `cancelled` (a worker that is gone
    leaves that to the reaper, docs/jobs.md). Each change is a conditional UPDATE, so a
    worker finishing meanwhile is never overwritten. Commits, and returns the refreshed row.

    Raises
    ------
    ApiError
        404 as get_job_or_404; 409 (`job-finished`) when it already succeeded or failed
        (cancelling a cancelled one is harmless).
    """
    job = get_job_or_404(session, job_id, kind)  # another tenant's job is not there to cancel
    changed = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
        status=JobStatus.CANCELLED, cancel_requested=True, finished_at=utcnow())).rowcount
    if not changed:
        changed = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                                  .values(cancel_requested=True)).rowcount
    session.commit()
    session.refresh(job)
    if not changed and job.status != JobStatus.CANCELLED:
        name = JOB_KIND_NAMES[kind]
        raise ApiError(409, "Conflict", f"{name} {job_id} has already {job.status}; "
                                        f"only queued or running {name}s can be cancelled", slug="job-finished")
    return job

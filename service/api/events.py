"""Live job events: Server-Sent Events read from the JobEpoch rows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from sqlalchemy import select

from service.api import responses
from service.api.common import get_or_404
from service.api.db import get_session
from service.core.db.tables import Job, JobEpoch
from service.core.problems import invalid
from service.core.statuses import TERMINAL_STATUSES

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")

MAX_EVENT_ID = 2**31 - 1


def _setting(name: str) -> float:
    """Read an EVENTS_* setting (service/core/settings.py) from the app config, where tests may change it."""
    return float(current_app.config[name])


def _resume_after() -> int:
    """Return the epoch to resume after: Last-Event-ID, else ?last_event_id=, else 0."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise invalid([{"field": "last_event_id", "message": f"must be an epoch number, not {raw[:50]!r}"}]) from None
    if value < 0:
        raise invalid([{"field": "last_event_id", "message": "must be 0 or more"}])
    # Past the last epoch any value means the same; a huge one must not overflow the database's integer.
    return min(value, MAX_EVENT_ID)


def _event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _poll(job_id: str, after: int) -> tuple[str | None, list[dict[str, Any]], dict[str, Any]]:
    """Read (status, new epoch records, job summary) in one short session."""
    with get_session() as session:
        job = session.get(Job, job_id)
        if job is None:  # deleted while streaming
            return None, [], {}
        records = list(session.scalars(select(JobEpoch.record).where(
            JobEpoch.job_id == job_id, JobEpoch.epoch > after).order_by(JobEpoch.epoch)))
        summary = responses.render(responses.JobSummary, {
            "job_id": job_id, "status": job.status, "epoch": job.epoch, "epochs": job.epochs,
            "model_id": job.model_id, "metrics": job.metrics, "error": job.error})
        return job.status, records, summary


def _stream(job_id: str, after: int, poll_s: float, heartbeat_s: float, max_s: float) -> Iterator[str]:
    started = last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        status, records, summary = _poll(job_id, after)
        for record in records:
            after = int(record["epoch"])
            yield _event("epoch", record, after)
            last_sent = time.monotonic()
        if status is None or status in TERMINAL_STATUSES:
            # Records were read in the same session as the status: none can follow a terminal one.
            yield _event("status", summary or responses.JobSummary(job_id=job_id, status="deleted").answer())
            return
        now = time.monotonic()
        if now - started >= max_s:
            yield ": stream time limit reached; reconnect with Last-Event-ID\n\n"
            return
        if now - last_sent >= heartbeat_s:
            yield ": heartbeat\n\n"
            last_sent = now
        time.sleep(poll_s)


@bp.get("/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Stream a job's epochs as Server-Sent Events, then its final status."""
    after = _resume_after()
    with get_session() as session:
        get_or_404(session, Job, job_id, "job")
    stream = _stream(job_id, after, _setting("EVENTS_POLL_S"), _setting("EVENTS_HEARTBEAT_S"),
                     _setting("EVENTS_MAX_S"))
    return Response(stream_with_context(stream), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

"""Live job events: Server-Sent Events read from the JobEpoch rows.

A stream holds a gunicorn thread for as long as it is open, so streams are rationed
(docs/operations.md, "Live events"): at most EVENTS_MAX_STREAMS_PER_PROCESS open in
one API process, and EVENTS_MAX_STREAMS_PER_TENANT of them one tenant's; one more is
a 429 with Retry-After. A stream gives its slot back when it ends, when its client
goes away (noticed within a poll under gunicorn, else at the second heartbeat that
cannot be written) and when its key stops working (re-checked through the key cache,
so within KEY_CACHE_TTL_S of a revocation). The backlog since Last-Event-ID is read
EVENTS_BACKLOG_PAGE records at a time, so a long job's stream holds one page in memory.
"""

from __future__ import annotations

import json
import select as select_io
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request, stream_with_context
from sqlalchemy import select

from service.api import responses
from service.api.auth import authenticate, current_tenant
from service.api.common import get_job_or_404
from service.api.db import get_session
from service.core.db.tables import Job, JobEpoch
from service.core.problems import ApiError, invalid
from service.core.statuses import TERMINAL_STATUSES

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")

MAX_EVENT_ID = 2**31 - 1
# A refused client may try again after this many seconds: slots free up as streams end
# (or in another API process, which a new connection may reach).
STREAM_RETRY_AFTER_S = 5
# What `retry:` tells EventSource to wait before it reconnects, in milliseconds.
RECONNECT_MS = 2000


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


class StreamSlots:
    """The event streams open in one API process: how many in all, and per tenant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_tenant: Counter[str] = Counter()

    def acquire(self, tenant: str, per_process: int, per_tenant: int | None) -> Callable[[], None]:
        """Take a slot for a stream of `tenant`, or raise the 429 problem; return the slot's release.

        `per_tenant` None: no cap per tenant (AUTH=off, where every request is the one tenant's).
        The release may be called any number of times; it gives the slot back once.
        """
        with self._lock:
            total, mine = sum(self._per_tenant.values()), self._per_tenant[tenant]
            if total >= per_process:
                raise _too_many("EVENTS_MAX_STREAMS_PER_PROCESS",
                                f"this API process has {total} event streams open; the limit "
                                f"(EVENTS_MAX_STREAMS_PER_PROCESS) is {per_process}")
            if per_tenant is not None and mine >= per_tenant:
                raise _too_many("EVENTS_MAX_STREAMS_PER_TENANT",
                                f"tenant {tenant} has {mine} event streams open in this API process; the "
                                f"limit (EVENTS_MAX_STREAMS_PER_TENANT) is {per_tenant}")
            self._per_tenant[tenant] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._per_tenant[tenant] -= 1
                if self._per_tenant[tenant] <= 0:
                    del self._per_tenant[tenant]

        return release


def _too_many(setting: str, message: str) -> ApiError:
    return ApiError(429, "Too Many Requests", f"{message}; close a stream, poll GET /v1/jobs/{{id}}/metrics, "
                    f"or retry after {STREAM_RETRY_AFTER_S} s", [{"field": setting, "message": message}],
                    slug="event-stream-limit", headers={"Retry-After": str(STREAM_RETRY_AFTER_S)})


def stream_slots(app: Flask) -> StreamSlots:
    """Return the app's stream slots (one app per gunicorn worker process: the counts are per process)."""
    slots = app.extensions.get("backprop.event_streams")
    if slots is None:
        slots = app.extensions.setdefault("backprop.event_streams", StreamSlots())
    return slots


def _client_gone(environ: dict[str, Any]) -> bool:
    """Say whether the client has closed its connection, without writing to it.

    gunicorn hands the socket over in the environ: a closed connection reads as
    end-of-file at once. A client that sent more bytes (or a server without the
    socket, or a TLS socket, which cannot peek) is taken as still there: the
    heartbeats find out then, when a write fails.
    """
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return False
    try:
        readable, _, _ = select_io.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return False


def _event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _poll(job_id: str, after: int, page: int) -> tuple[str | None, list[dict[str, Any]], dict[str, Any]]:
    """Read (status, the next page of epoch records after `after`, job summary) in one short session.

    The status is read first: on PostgreSQL each statement sees what was committed before
    it, so a terminal status read here comes with every record of the job after it.
    """
    with get_session() as session:
        job = session.get(Job, job_id)
        if job is None:  # deleted while streaming
            return None, [], {}
        records = list(session.scalars(select(JobEpoch.record).where(
            JobEpoch.job_id == job_id, JobEpoch.epoch > after).order_by(JobEpoch.epoch).limit(page)))
        summary = responses.render(responses.JobSummary, {
            "job_id": job_id, "status": job.status, "epoch": job.epoch, "epochs": job.epochs,
            "model_id": job.model_id, "metrics": job.metrics, "error": job.error})
        return job.status, records, summary


def _stream(job_id: str, after: int, key_valid: Callable[[], bool], client_gone: Callable[[], bool],
            release: Callable[[], None]) -> Iterator[str]:
    poll_s, heartbeat_s, max_s = _setting("EVENTS_POLL_S"), _setting("EVENTS_HEARTBEAT_S"), _setting("EVENTS_MAX_S")
    page = int(current_app.config["EVENTS_BACKLOG_PAGE"])
    try:
        started = last_sent = time.monotonic()
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            status, records, summary = _poll(job_id, after, page)
            for record in records:
                after = int(record["epoch"])
                yield _event("epoch", record, after)
                last_sent = time.monotonic()
            more = len(records) == page  # a full page: the backlog may go on, and the status waits for it
            if not more and (status is None or status in TERMINAL_STATUSES):
                yield _event("status", summary or responses.JobSummary(job_id=job_id, status="deleted").answer())
                return
            if client_gone():
                return
            if not key_valid():
                yield ": the API key was revoked; the stream ends\n\n"
                return
            now = time.monotonic()
            if now - started >= max_s:
                yield ": stream time limit reached; reconnect with Last-Event-ID\n\n"
                return
            if more:
                continue
            if now - last_sent >= heartbeat_s:
                yield ": heartbeat\n\n"
                last_sent = now
            time.sleep(poll_s)
    finally:
        release()


@bp.get("/<job_id>/events")
def job_events(job_id: str) -> Response:
    """Stream a job's epochs as Server-Sent Events, then its final status."""
    after = _resume_after()
    with get_session() as session:
        get_job_or_404(session, job_id)
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    header = request.headers.get("Authorization")
    environ = request.environ

    def key_valid() -> bool:
        try:
            authenticate(app, header)  # through the key cache: a query once per KEY_CACHE_TTL_S
        except ApiError:
            return False
        return True

    auth_on = app.config["AUTH"] != "off"
    release = stream_slots(app).acquire(current_tenant(), int(app.config["EVENTS_MAX_STREAMS_PER_PROCESS"]),
                                        int(app.config["EVENTS_MAX_STREAMS_PER_TENANT"]) if auth_on else None)
    try:
        stream = _stream(job_id, after, key_valid, lambda: _client_gone(environ), release)
        response = Response(stream_with_context(stream), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    except BaseException:
        release()
        raise
    # A stream that never started (its client went before the first write) is closed, not run.
    response.call_on_close(release)
    return response

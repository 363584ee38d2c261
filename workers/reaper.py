"""The reaper: each worker's thread that recovers jobs whose worker or message was lost (docs/jobs.md).

Every change is a compare-and-set on what was read, so several workers' reapers
can run at once and only one acts on a job. Publishing a job twice is harmless:
the claim lets one delivery train it. This module imports no numpy: the Celery
main process runs it.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.tables import Job
from service.core.ids import utcnow
from service.core.statuses import JobStatus
from workers.lease import JobSettings, Publish, as_utc, fail_queued, lost_error, time_limit, undeliverable_error

log = logging.getLogger(__name__)


def _same(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value


def _lost_job_outcome(job: Any, settings: JobSettings, now: datetime) -> tuple[str, dict[str, Any]]:
    """Decide what becomes of a running job whose lease went stale: (what happened, the new values)."""
    limit = time_limit(job.time_limit_s, settings)
    if job.cancel_requested:
        return "cancelled", {"status": JobStatus.CANCELLED, "finished_at": now}
    if limit is not None and job.started_at is not None and \
            (now - as_utc(job.started_at)).total_seconds() > limit[0]:
        return "failed", {"status": JobStatus.FAILED, "finished_at": now, "error": limit[1]}
    if job.attempt >= settings.max_attempts:
        return "failed", {"status": JobStatus.FAILED, "finished_at": now, "error": lost_error(job.attempt, job.kind)}
    return "requeued", {"status": JobStatus.QUEUED, "owner": None, "heartbeat_at": None, "published_at": now}


def _reclaim_lost(session: Session, settings: JobSettings, now: datetime, counts: dict[str, int],
                  to_publish: list[tuple[str, str]]) -> None:
    """Settle every running job whose heartbeat is older than LEASE_TIMEOUT_S."""
    stale = now - timedelta(seconds=settings.lease_timeout_s)
    lost = session.execute(select(Job.id, Job.kind, Job.owner, Job.heartbeat_at, Job.attempt, Job.cancel_requested,
                                  Job.started_at, Job.device, Job.time_limit_s)
                           .where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < stale)).all()
    for job in lost:
        kind, values = _lost_job_outcome(job, settings, now)
        changed = session.execute(update(Job).where(
            Job.id == job.id, Job.status == JobStatus.RUNNING, _same(Job.owner, job.owner),
            _same(Job.heartbeat_at, job.heartbeat_at)).values(**values)).rowcount
        session.commit()
        if changed:
            counts[kind] += 1
            log.warning("job %s: lease of %s is stale (attempt %d): %s", job.id, job.owner, job.attempt, kind)
            if kind == "requeued":
                to_publish.append((job.id, job.device))


def _republish_forgotten(sessions: sessionmaker[Session], session: Session, settings: JobSettings,
                         now: datetime, counts: dict[str, int], to_publish: list[tuple[str, str]]) -> None:
    """Publish again every job queued longer than REQUEUE_QUEUED_AFTER_S (its message may be gone)."""
    waited = now - timedelta(seconds=settings.requeue_queued_after_s)
    forgotten = session.execute(select(Job.id, Job.published_at, Job.deliveries, Job.attempt, Job.device)
                                .where(Job.status == JobStatus.QUEUED,
                                       func.coalesce(Job.published_at, Job.created_at) < waited)).all()
    for job in forgotten:
        if job.deliveries - job.attempt >= settings.max_attempts:
            if fail_queued(sessions, job.id, undeliverable_error(job.deliveries)):
                counts["failed"] += 1
            continue
        changed = session.execute(update(Job).where(
            Job.id == job.id, Job.status == JobStatus.QUEUED, _same(Job.published_at, job.published_at))
            .values(published_at=now)).rowcount
        session.commit()
        if changed:
            counts["republished"] += 1
            to_publish.append((job.id, job.device))


def reap(sessions: sessionmaker[Session], publish: Publish, settings: JobSettings,
         now: datetime | None = None) -> dict[str, int]:
    """Recover lost jobs once; return how many were re-queued, re-published, cancelled, failed.

    - running with a stale heartbeat: cancelled if a user asked, failed when over
      the time limit or out of attempts, else queued again and published;
    - queued longer than REQUEUE_QUEUED_AFTER_S (its message may be gone):
      published again, or failed when deliveries keep failing before the claim.
    """
    now = now or utcnow()
    counts = {"requeued": 0, "republished": 0, "cancelled": 0, "failed": 0}
    to_publish: list[tuple[str, str]] = []
    with sessions() as session:
        _reclaim_lost(session, settings, now, counts, to_publish)
        _republish_forgotten(sessions, session, settings, now, counts, to_publish)
    for job_id, device in to_publish:
        try:
            publish(job_id, device)
        except Exception:  # the broker is down: the job stays queued; a pass after REQUEUE_QUEUED_AFTER_S retries
            log.exception("job %s: could not publish it again", job_id)
    return counts


class Reaper:
    """Run reap() every REAPER_INTERVAL_S in a daemon thread (one per worker; see docs/jobs.md)."""

    def __init__(self, sessions: sessionmaker[Session], publish: Publish, settings: JobSettings) -> None:
        self.sessions = sessions
        self.publish = publish
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backprop-reaper", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after its current pass."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_s):
            try:
                counts = reap(self.sessions, self.publish, self.settings)
                if any(counts.values()):
                    log.warning("reaper: %s", counts)
            except Exception:  # the database is down: try again next interval
                log.exception("reaper pass failed")

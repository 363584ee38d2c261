"""The job row's lease: claim, heartbeat, hand-back, time limits (docs/jobs.md; the reaper is workers/reaper.py).

Every change of a job's state here is one conditional UPDATE whose WHERE clause
says what the writer believes (queued; running and stale; held by me). SQLite
runs one writer at a time, and PostgreSQL re-checks the WHERE clause of an
UPDATE that waited for a row lock, so of two racing writers exactly one changes
the row: no FOR UPDATE SKIP LOCKED needed. Timestamps come from the workers'
clocks, which must agree to well within LEASE_TIMEOUT_S.

This module imports no numpy: the Celery main process runs the reaper.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.engine import make_engine, make_session_factory
from service.core.db.tables import Job
from service.core.ids import utcnow
from service.core.settings import load_config, setting_default
from service.core.statuses import JobKind, JobStatus

log = logging.getLogger(__name__)

Publish = Callable[[str, str], None]

_default_sessions: sessionmaker[Session] | None = None


@dataclass(frozen=True)
class JobSettings:
    """The job recovery settings of service.core.settings.Settings, in seconds unless named otherwise.

    The defaults are the settings' defaults, so a test may name only what it changes.
    """

    lease_timeout_s: float = setting_default("LEASE_TIMEOUT_S")
    reaper_interval_s: float = setting_default("REAPER_INTERVAL_S")
    requeue_queued_after_s: float = setting_default("REQUEUE_QUEUED_AFTER_S")
    max_attempts: int = setting_default("MAX_ATTEMPTS")
    time_limit_s: float = setting_default("JOB_TIME_LIMIT_S")
    checkpoint_interval_s: float = setting_default("CHECKPOINT_INTERVAL_S")
    progress_interval_s: float = setting_default("PROGRESS_INTERVAL_S")
    # Not recovery: the values a forward pass may hold, which sizes the validation chunks.
    max_activation_floats: int = setting_default("MAX_ACTIVATION_FLOATS")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> JobSettings:
        """Take the settings from a configuration made by load_config."""
        return cls(lease_timeout_s=config["LEASE_TIMEOUT_S"], reaper_interval_s=config["REAPER_INTERVAL_S"],
                   requeue_queued_after_s=config["REQUEUE_QUEUED_AFTER_S"],
                   max_attempts=config["MAX_ATTEMPTS"], time_limit_s=config["JOB_TIME_LIMIT_S"],
                   checkpoint_interval_s=config["CHECKPOINT_INTERVAL_S"],
                   progress_interval_s=config["PROGRESS_INTERVAL_S"],
                   max_activation_floats=config["MAX_ACTIVATION_FLOATS"])

    @property
    def heartbeat_s(self) -> float:
        """Renew the heartbeat several times per lease timeout, so one slow write cannot lose it."""
        return min(5.0, self.lease_timeout_s / 4)


def default_settings() -> JobSettings:
    """Return the settings of this process's environment."""
    return JobSettings.from_config(load_config())


def default_sessions() -> sessionmaker[Session]:
    """Return this process's session factory for DATABASE_URL (made on first use, after any fork)."""
    global _default_sessions
    if _default_sessions is None:
        _default_sessions = make_session_factory(make_engine(load_config()["DATABASE_URL"]))
    return _default_sessions


def default_owner() -> str:
    """Name this worker process for the job's lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def time_limit_error(limit_s: float, per_job: bool = False, asked_s: float | None = None) -> str:
    """Say why a job over its time limit failed, which limit it was, and what to do.

    `per_job`: the limit is the job's own time_limit_s; otherwise it is JOB_TIME_LIMIT_S
    (`asked_s`: the larger time_limit_s the job asked for).
    """
    if per_job:
        return (f"the job ran longer than its time limit, the job's time_limit_s of {limit_s:g} s, and "
                f"was stopped; train for fewer epochs or on less data, or submit it again with a "
                f"larger time_limit_s")
    asked = f", lower than the job's time_limit_s of {asked_s:g} s" if asked_s is not None else ""
    return (f"the job ran longer than its time limit of {limit_s:g} s (JOB_TIME_LIMIT_S{asked}) and was "
            f"stopped; train for fewer epochs or on less data, or ask the operator to raise the limit")


def time_limit(job_limit_s: float | None, settings: JobSettings) -> tuple[float, str] | None:
    """Return (seconds, error) of the limit that applies to a job, or None when none does.

    Both the job's own time_limit_s and the service's JOB_TIME_LIMIT_S (0: none)
    apply, so the smaller wins; the error names the one that did.
    """
    service_s = settings.time_limit_s or None
    if job_limit_s is not None and (service_s is None or job_limit_s <= service_s):
        return job_limit_s, time_limit_error(job_limit_s, per_job=True)
    if service_s is None:
        return None
    return service_s, time_limit_error(service_s, asked_s=job_limit_s)


def lost_error(attempts: int, kind: str = JobKind.TRAIN) -> str:
    """Say why a job whose worker kept dying failed, and what a user can make smaller.

    A training job's memory grows with its network and batch size; an evaluation's or a
    batch prediction's (JobKind) with its dataset only (its passes are bounded).
    """
    advice = "try a smaller network, batch size or dataset" if kind == JobKind.TRAIN else "try a smaller dataset"
    return (f"the job's worker was lost {attempts} times (killed, out of memory, or crashed) and "
            f"the job was not tried again (MAX_ATTEMPTS); {advice}, and see the worker logs")


def undeliverable_error(deliveries: int) -> str:
    """Say why a job that no worker could start failed."""
    return (f"no worker could start the job after {deliveries} deliveries (the task failed before "
            f"training; see the worker logs); the operator must fix the workers, then submit again")


def claim(sessions: sessionmaker[Session], job_id: str, owner: str,
          settings: JobSettings | None = None) -> bool:
    """Take a job with one conditional UPDATE; False when another worker holds it or it is done.

    A queued job is taken; so is a running one whose heartbeat is older than the
    lease timeout (its worker is presumed dead), unless it used up its attempts.
    """
    settings = settings or JobSettings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.lease_timeout_s)
    with sessions() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(False),
                   or_(Job.status == JobStatus.QUEUED,
                       and_(Job.status == JobStatus.RUNNING, Job.heartbeat_at < stale,
                            Job.attempt < settings.max_attempts)))
            .values(status=JobStatus.RUNNING, owner=owner, attempt=Job.attempt + 1, heartbeat_at=now,
                    started_at=func.coalesce(Job.started_at, now), error=None))
        session.commit()
        return result.rowcount == 1


def record_delivery(sessions: sessionmaker[Session], job_id: str) -> None:
    """Count a delivery that found the job queued (before any code that could fail to load)."""
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                        .values(deliveries=Job.deliveries + 1))
        session.commit()


def fail_queued(sessions: sessionmaker[Session], job_id: str, error: str) -> bool:
    """Fail a job that is still queued (nobody holds it); False when it was not queued."""
    with sessions() as session:
        changed = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
            status=JobStatus.FAILED, error=error, finished_at=utcnow())).rowcount
        session.commit()
        return changed == 1


def hand_back(sessions: sessionmaker[Session], job_id: str, owner: str) -> bool:
    """Return a job this worker holds to the queue (the worker is shutting down).

    A hand-back is not a failure: the attempt and the delivery it used are given
    back, so rolling restarts cannot use up MAX_ATTEMPTS.
    """
    with sessions() as session:
        changed = session.execute(
            update(Job).where(Job.id == job_id, Job.owner == owner, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.QUEUED, owner=None, heartbeat_at=None, published_at=utcnow(),
                    attempt=Job.attempt - 1, deliveries=Job.deliveries - 1)).rowcount
        session.commit()
        return changed == 1


def as_utc(moment: datetime) -> datetime:
    """Return an aware UTC datetime (SQLite gives naive UTC back)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""The states and kinds of a job: the one list of each (docs/jobs.md tells how a job moves between states)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A job's status, as stored in jobs.status and answered by the API."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The states a job never leaves.
TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# The states of a job that holds one of its tenant's job slots (TENANT_MAX_CONCURRENT_JOBS).
ACTIVE_STATUSES = frozenset(JobStatus) - TERMINAL_STATUSES


class JobKind(StrEnum):
    """What a job does (jobs.kind): all kinds share the job's status, lease, reaper and slots."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    BATCH_PREDICT = "batch_predict"


# The prefix of each kind's ids: job_…, ev_…, bp_….
ID_PREFIXES = {JobKind.TRAIN: "job", JobKind.EVALUATE: "ev", JobKind.BATCH_PREDICT: "bp"}

"""Per-tenant limits: jobs queued or running (429) and bytes stored (413).

The settings TENANT_MAX_CONCURRENT_JOBS and TENANT_MAX_STORED_MB apply to every
tenant; a tenant's row may override either (`flask --app service tenants
set-limits`). Both are checked when a request would add to the count (a job
created, a dataset uploaded), never afterwards: a refused request changes
nothing, and what is already stored stays (docs/service.md). Each check and
the insert it allows happen under the tenant's row lock (`hold_tenant`), so
concurrent requests of one tenant cannot all take the same room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, cast, func, select, update
from sqlalchemy.orm import Session

from service.core.db.tables import Dataset, DatasetPayload, Job, JobEpoch, JobOutputChunk, Tenant, TrainedModel
from service.core.problems import ApiError
from service.core.statuses import ACTIVE_STATUSES
from service.core.tenancy.keys import ensure_tenant

MB = 1024 * 1024
# A job slot frees up when a job ends; a client may try again after this many seconds.
RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one tenant."""

    max_concurrent_jobs: int
    max_stored_mb: int


def tenant_limits(session: Session, tenant: str, config: Any) -> Limits:
    """Return a tenant's limits: its row's overrides, else the settings."""
    row = session.get(Tenant, tenant)
    jobs = row.max_concurrent_jobs if row is not None and row.max_concurrent_jobs else None
    stored = row.max_stored_mb if row is not None and row.max_stored_mb else None
    return Limits(jobs or int(config["TENANT_MAX_CONCURRENT_JOBS"]),
                  stored or int(config["TENANT_MAX_STORED_MB"]))


def active_jobs(session: Session, tenant: str) -> int:
    """Count a tenant's jobs that are queued or running."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant, Job.status.in_(ACTIVE_STATUSES))) or 0


def stored_bytes(session: Session, tenant: str) -> int:
    """Return the bytes a tenant stores: its datasets' payloads (each once), models' weights, epoch records
    and batch predictions' files.

    A payload shared with another tenant (stored before payloads were addressed per
    tenant) counts for both: each would need it alone. An epoch record counts as the
    length of its stored JSON text, an estimate of what it takes in the database. A batch
    prediction's file counts as its stored pieces (job_output_chunks) until it is deleted.
    One SELECT of a sum per kind, so the four are read at one moment.
    """
    payloads = select(Dataset.payload_sha256).where(Dataset.tenant_id == tenant).distinct()
    data = select(func.coalesce(func.sum(DatasetPayload.size_bytes), 0)).where(
        DatasetPayload.sha256.in_(payloads)).scalar_subquery()
    weights = select(func.coalesce(func.sum(func.length(TrainedModel.weights)), 0)).where(
        TrainedModel.tenant_id == tenant).scalar_subquery()
    epochs = (select(func.coalesce(func.sum(func.length(cast(JobEpoch.record, Text))), 0))
              .join(Job, Job.id == JobEpoch.job_id).where(Job.tenant_id == tenant).scalar_subquery())
    outputs = (select(func.coalesce(func.sum(func.length(JobOutputChunk.data)), 0))
               .join(Job, Job.id == JobOutputChunk.job_id).where(Job.tenant_id == tenant).scalar_subquery())
    row = session.execute(select(data, weights, epochs, outputs)).one()
    return sum(int(value or 0) for value in row)


def has_payload(session: Session, tenant: str, digest: str) -> bool:
    """Say whether one of the tenant's datasets already uses this payload (storing it again is free)."""
    return session.scalar(select(Dataset.id).where(Dataset.tenant_id == tenant,
                                                   Dataset.payload_sha256 == digest).limit(1)) is not None


def hold_tenant(session: Session, tenant: str) -> None:
    """Lock the tenant's row until the session commits or rolls back.

    Two requests of one tenant then count its jobs one after the other, so they cannot
    both take its last slot. An UPDATE that changes nothing rather than SELECT ... FOR
    UPDATE: SQLite has no FOR UPDATE, and there an UPDATE takes the database's write
    lock at once (PostgreSQL locks the one row, so other tenants do not wait).
    """
    held = update(Tenant).where(Tenant.id == tenant).values(id=Tenant.id)
    if session.connection().execute(held).rowcount == 0:  # the session's own transaction
        # A tenant's row comes with its first key (tenant `default`'s with migration 0003): one
        # without a row is made here, or the UPDATE would lock nothing on PostgreSQL.
        ensure_tenant(session, tenant)
        session.execute(held)


def check_job_slot(session: Session, tenant: str, config: Any) -> None:
    """Raise the 429 problem when the tenant already has as many active jobs as it may.

    Holds the tenant's row (`hold_tenant`) until the caller commits its job or gives up.
    """
    hold_tenant(session, tenant)
    limit = tenant_limits(session, tenant, config).max_concurrent_jobs
    active = active_jobs(session, tenant)
    if active >= limit:
        message = (f"tenant {tenant} has {active} jobs queued or running; the limit "
                   f"(TENANT_MAX_CONCURRENT_JOBS) is {limit}")
        raise ApiError(429, "Too Many Requests", f"{message}; wait for one to finish or cancel one",
                       [{"field": "TENANT_MAX_CONCURRENT_JOBS", "message": message}],
                       slug="tenant-job-limit", headers={"Retry-After": str(RETRY_AFTER_S)})


def check_storage(session: Session, tenant: str, config: Any, adding: int) -> None:
    """Raise the 413 problem when storing `adding` more bytes would take the tenant over its limit.

    With `adding` 0 (a job, whose model's size is not known yet) it refuses a tenant at or over it.
    """
    limit_mb = tenant_limits(session, tenant, config).max_stored_mb
    stored = stored_bytes(session, tenant)
    limit = limit_mb * MB
    if stored + adding <= limit and stored < limit:
        return
    if adding:
        message = (f"tenant {tenant} stores {stored:,} bytes; {adding:,} more would exceed the limit "
                   f"(TENANT_MAX_STORED_MB) of {limit_mb} MB ({limit:,} bytes)")
    else:  # a job: its model will add weights to a tenant already out of room
        message = (f"tenant {tenant} stores {stored:,} bytes, the limit (TENANT_MAX_STORED_MB) of "
                   f"{limit_mb} MB ({limit:,} bytes); a job's model would add more")
    raise ApiError(413, "Content Too Large", f"{message}; delete datasets, models or batch predictions first",
                   [{"field": "TENANT_MAX_STORED_MB", "message": message}], slug="tenant-storage-limit")


def check_room_for_payload(session: Session, tenant: str, config: Any, key: str, size: int) -> None:
    """Raise the 413 problem when the tenant has no room for this payload; else hold its row.

    A payload the tenant already uses costs it nothing more. Holding the tenant's row
    (`hold_tenant`) until the caller commits its dataset makes check and insert one step:
    concurrent uploads of one tenant are counted one after the other.
    """
    hold_tenant(session, tenant)
    if not has_payload(session, tenant, key):
        check_storage(session, tenant, config, size)

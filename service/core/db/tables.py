"""SQLAlchemy models of everything the service stores.

Migrations in migrations/ create these tables; this module never does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.core.ids import utcnow

# The tenant of everything when AUTH=off, and of rows stored before tenancy (migration 0003).
DEFAULT_TENANT = "default"


class Base(DeclarativeBase):
    """Declarative base of the service's tables."""


class Tenant(Base):
    """A tenant: the owner of datasets, networks, jobs and models, with its own limits.

    The limits are overrides: None means the setting's value (TENANT_MAX_*).
    """

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the name
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_stored_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key of a tenant, stored as the sha256 of the key; the key itself is never stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DatasetPayload(Base):
    """A parsed table stored once, addressed by the sha256 of its .npz bytes."""

    __tablename__ = "dataset_payloads"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The whole .npz in one value: payloads stored before migration 0005 only. Newer ones
    # hold b"" here and live in dataset_payload_chunks, so no process holds all of it at once.
    # (Empty rather than NULL: making the column nullable would rebuild the table on SQLite.)
    npz: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetPayloadChunk(Base):
    """One piece of a payload's .npz bytes; the pieces in `seq` order are the whole file."""

    __tablename__ = "dataset_payload_chunks"

    sha256: Mapped[str] = mapped_column(ForeignKey("dataset_payloads.sha256"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Dataset(Base):
    """An uploaded dataset: a payload plus the choice of target and task."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(200))
    payload_sha256: Mapped[str] = mapped_column(ForeignKey("dataset_payloads.sha256"), index=True)
    n_rows: Mapped[int] = mapped_column(Integer)
    # [{"name", "kind", "role", "missing", "distinct", "categories", ...}] in file order
    # (service.core.data.parsing describes the keys; datasets stored before 0006 have name,
    # kind and categories only).
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The default features of a job: the non-target columns of role "feature".
    features: Mapped[list[str]] = mapped_column(JSON)
    targets: Mapped[list[str]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(20))
    classes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    source: Mapped[str] = mapped_column(String(10))  # csv | json | jsonl | parquet
    n_rows_without_target: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Network(Base):
    """A validated network definition."""

    __tablename__ = "networks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default=DEFAULT_TENANT)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A training job; the database row is the source of truth for its state."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default=DEFAULT_TENANT)
    status: Mapped[str] = mapped_column(String(20), index=True)
    # statuses.JobKind: a training job, or an evaluation or batch prediction of `input_model_id`
    # on `dataset_id`, whose options are in `training` and result in `metrics` (migration 0007).
    kind: Mapped[str] = mapped_column(String(20), index=True, default="train", server_default="train")
    input_model_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    network_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # The definition as it was when the job was created, so later edits cannot change it.
    network: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The columns the job trains on, resolved at creation (None: a job from before 0006,
    # which uses its dataset's features).
    features: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    device: Mapped[str] = mapped_column(String(10))
    epochs: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Lease (owner, attempt, heartbeat): claimed by a conditional UPDATE.
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When the job's message was last sent: a job queued long after it lost its message.
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Deliveries that found the job queued; more of them than attempts means the task
    # failed before it could claim the job (docs/jobs.md).
    deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The job's own wall-clock limit (the smaller of it and JOB_TIME_LIMIT_S applies), and
    # the model a warm start takes its weights and preprocessing from (migration 0004).
    time_limit_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    init_from_model: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobEpoch(Base):
    """One epoch's record of a job: losses, metrics, per-layer diagnostics, flags."""

    __tablename__ = "job_epochs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobCheckpoint(Base):
    """The latest end-of-epoch checkpoint of a job (backprop.Checkpoint bytes)."""

    __tablename__ = "job_checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobOutputChunk(Base):
    """One piece of a job's output file (a batch prediction's CSV or Parquet), in `seq` order."""

    __tablename__ = "job_output_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TrainedModel(Base):
    """A trained network with everything /predict needs to score raw rows."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default=DEFAULT_TENANT)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    dataset_id: Mapped[str] = mapped_column(String(40))
    task: Mapped[str] = mapped_column(String(20))
    loss: Mapped[str] = mapped_column(String(40))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON)
    classes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    parameter_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

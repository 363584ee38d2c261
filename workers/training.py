"""Run one training job: claim it, train with the engine, record progress, save the model."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

import backprop
import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.config import load_config
from service.db import make_engine, make_session_factory
from service.ids import new_id, utcnow
from service.preprocessing import Preprocessor, fit
from service.store import load_table
from service.tables import Dataset, Job, JobCheckpoint, JobEpoch, TrainedModel

log = logging.getLogger(__name__)

# Reading the cancel flag costs a query; between batches, look at most this often.
CANCEL_POLL_S = 0.25
# Epochs can be long: between batches, renew the lease's heartbeat this often too.
HEARTBEAT_S = 5.0

_default_sessions: sessionmaker[Session] | None = None


class JobDataError(Exception):
    """The job cannot run on its data; the message tells the user what to do."""


class LeaseLost(Exception):
    """Another worker owns the job now (or it finished); stop without writing."""


class WorkerGone(Exception):
    """The process that started this one died (e.g. kill -9 of the Celery worker); stop training."""


def default_sessions() -> sessionmaker[Session]:
    """Return this process's session factory for DATABASE_URL."""
    global _default_sessions
    if _default_sessions is None:
        _default_sessions = make_session_factory(make_engine(load_config()["DATABASE_URL"]))
    return _default_sessions


def default_owner() -> str:
    """Name this worker process for the job's lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def json_safe(value: Any) -> Any:
    """Return a JSON-able copy: numpy scalars become Python ones, non-finite floats null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def claim(sessions: sessionmaker[Session], job_id: str, owner: str) -> bool:
    """Take a queued job with a conditional UPDATE; False when another delivery got it first."""
    with sessions() as session:
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            .values(status="running", owner=owner, attempt=Job.attempt + 1, heartbeat_at=now,
                    started_at=now, error=None))
        session.commit()
        return result.rowcount == 1


def finish(sessions: sessionmaker[Session], job_id: str, owner: str, status: str,
           error: str | None = None) -> None:
    """Put a job this worker holds into a terminal state."""
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.owner == owner, Job.status == "running")
                        .values(status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow()))
        session.commit()


class JobRecorder:
    """The engine's callbacks: each epoch, heartbeat and checkpoint in a short transaction."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.owner = owner
        self._next_cancel_check = 0.0
        self._next_heartbeat = time.monotonic() + HEARTBEAT_S
        self._cancelled = False
        # A pool process outlives a killed Celery parent; it must not keep the lease alive.
        self._parent_pid = os.getppid()

    def _held(self) -> Any:
        return (Job.id == self.job_id, Job.owner == self.owner, Job.status == "running")

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """Store the epoch's record and move the job's progress and heartbeat."""
        record = json_safe(record)
        summary = {k: v for k, v in record.items() if k != "layers"}
        with self.sessions() as session:
            moved = session.execute(update(Job).where(*self._held()).values(
                epoch=int(record["epoch"]), metrics=summary, heartbeat_at=utcnow())).rowcount
            if not moved:
                session.rollback()
                raise LeaseLost(self.job_id)
            session.merge(JobEpoch(job_id=self.job_id, epoch=int(record["epoch"]), record=record))
            session.commit()

    def should_stop(self) -> bool:
        """Say whether a user asked to cancel (the flag on the row, read at most every 0.25 s).

        Also renews the heartbeat every few seconds, and stops the worker when it
        lost the lease or its parent process.
        """
        if os.getppid() != self._parent_pid:
            raise WorkerGone(self.job_id)
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_S
            with self.sessions() as session:
                held = session.execute(update(Job).where(*self._held()).values(heartbeat_at=utcnow())).rowcount
                session.commit()
            if not held:
                raise LeaseLost(self.job_id)
        if not self._cancelled and now >= self._next_cancel_check:
            self._next_cancel_check = now + CANCEL_POLL_S
            with self.sessions() as session:
                self._cancelled = bool(session.scalar(
                    select(Job.cancel_requested).where(Job.id == self.job_id)))
        return self._cancelled

    def on_checkpoint(self, checkpoint: backprop.Checkpoint) -> None:
        """Keep the latest end-of-epoch checkpoint, so a re-delivered job can resume."""
        data = checkpoint.to_bytes()
        with self.sessions() as session:
            session.merge(JobCheckpoint(job_id=self.job_id, epoch=int(checkpoint.epoch), data=data,
                                        updated_at=utcnow()))
            session.commit()


def _final_metrics(history: Any) -> dict[str, Any]:
    """Return the record of the epoch whose weights the model keeps, with how training ended."""
    records = list(history)
    best_epoch = int(getattr(history, "best_epoch", 0) or 0)
    chosen = next((r for r in records if r.get("epoch") == best_epoch), records[-1] if records else {})
    metrics = {k: v for k, v in chosen.items() if k != "layers"}
    metrics["epochs_run"] = len(records)
    metrics["stopped_early"] = bool(getattr(history, "stopped_early", False))
    return json_safe(metrics)


def _prepare(session: Session, job: Job) -> tuple[Preprocessor, dict[str, Any], tuple[Any, Any] | None]:
    """Load the dataset, split it, fit the preprocessing and encode both splits."""
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise JobDataError(f"dataset {job.dataset_id} was deleted before the job ran; "
                           f"upload it again and submit a new job")
    table = load_table(session, dataset)
    training = job.training
    train_rows, val_rows = backprop.train_validation_split(table.n_rows, training["validation_split"],
                                                           training["seed"])
    state = fit(table, dataset.features, dataset.targets, dataset.task, dataset.classes, train_rows)
    preprocessor = Preprocessor(state)
    loss = training["loss"]

    def labels(rows: np.ndarray) -> np.ndarray:
        y = preprocessor.targets_from_table(table, rows)
        return y.astype(np.float32).reshape(-1, 1) if loss == "binary_cross_entropy" else y

    data = {"X": preprocessor.encode_table(table, train_rows), "y": labels(train_rows)}
    validation = None
    if len(val_rows):
        validation = (preprocessor.encode_table(table, val_rows), labels(val_rows))
    return preprocessor, data, validation


def _train(sessions: sessionmaker[Session], job_id: str, owner: str) -> None:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        preprocessor, data, validation = _prepare(session, job)
        saved = session.scalar(select(JobCheckpoint.data).where(JobCheckpoint.job_id == job_id))
    training = dict(job.training)
    spec = job.network
    try:
        network = backprop.build(spec, input_dim=preprocessor.input_width, seed=training["seed"],
                                 device=job.device)
    except backprop.SpecError as error:
        raise JobDataError(f"the network does not fit the training data ({error}); the input "
                           f"width after one-hot encoding is {preprocessor.input_width}") from None
    recorder = JobRecorder(sessions, job_id, owner)
    checkpoint = backprop.Checkpoint.from_bytes(saved) if saved is not None else None
    history = backprop.train(network, data["X"], data["y"], validation_data=validation,
                             on_epoch_end=recorder.on_epoch_end, should_stop=recorder.should_stop,
                             on_checkpoint=recorder.on_checkpoint, checkpoint=checkpoint, **training)
    definition, weights = backprop.save(network)
    metrics = _final_metrics(history)
    parameter_count = int(sum(np.prod(p.shape) for p in network.parameters().values()))
    with sessions() as session:
        model = TrainedModel(id=new_id("mdl"), job_id=job_id, dataset_id=job.dataset_id,
                             task=preprocessor.task, loss=training["loss"], definition=definition,
                             weights=weights, preprocessing=preprocessor.state,
                             classes=preprocessor.classes, metrics=metrics,
                             parameter_count=parameter_count)
        session.add(model)
        done = session.execute(update(Job).where(Job.id == job_id, Job.owner == owner,
                                                 Job.status == "running").values(
            status="succeeded", model_id=model.id, metrics=metrics, finished_at=utcnow(),
            heartbeat_at=utcnow())).rowcount
        if not done:
            session.rollback()
            raise LeaseLost(job_id)
        session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job_id))
        session.commit()


def run_job(job_id: str, sessions: sessionmaker[Session] | None = None, owner: str | None = None) -> str:
    """Train one job to a terminal state and return its status (domain errors become job states)."""
    sessions = sessions or default_sessions()
    owner = owner or default_owner()
    if not claim(sessions, job_id, owner):
        with sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
        log.info("job %s not claimed (status %s)", job_id, status)
        return status or "missing"
    try:
        _train(sessions, job_id, owner)
        return "succeeded"
    except backprop.TrainingCancelled:
        finish(sessions, job_id, owner, "cancelled")
        return "cancelled"
    except backprop.TrainingDiverged as error:
        finish(sessions, job_id, owner, "failed", str(error))
        return "failed"
    except backprop.DeviceUnavailable as error:
        finish(sessions, job_id, owner, "failed",
               f"this worker cannot train on the requested device: {error}; submit with "
               f"device cpu or start a GPU worker (queue gpu)")
        return "failed"
    except (JobDataError, backprop.ConfigError) as error:
        finish(sessions, job_id, owner, "failed", str(error))
        return "failed"
    except LeaseLost:
        log.warning("job %s: lease lost; another worker owns it now", job_id)
        return "lost"
    except WorkerGone:
        # Leave the row as it is: its heartbeat goes stale and the job can be reclaimed.
        log.warning("job %s: the worker's parent process is gone; abandoning the job", job_id)
        return "abandoned"
    except MemoryError:
        finish(sessions, job_id, owner, "failed", "the worker ran out of memory; use a smaller "
                                                  "network, batch size or dataset")
        return "failed"
    except Exception as error:  # a bug: record it on the job rather than leave it running
        log.exception("job %s failed unexpectedly", job_id)
        finish(sessions, job_id, owner, "failed", f"internal error in the worker: "
                                                  f"{type(error).__name__}: {error}")
        return "failed"

"""Run one training job: claim it, train with the engine, record progress, save the model."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import backprop
from service.core.data.parsing import ParsedTable
from service.core.data.preprocessing import Preprocessor, fit
from service.core.db.store import load_table
from service.core.db.tables import Dataset, Job, JobCheckpoint, JobEpoch, TrainedModel
from service.core.ids import new_id, utcnow
from service.core.logs import job_context
from service.core.networks import eval_rows_per_pass
from service.core.schemas import PERMUTATION_REPEATS_DEFAULT, SERVICE_TRAINING_FIELDS
from service.core.statuses import JobStatus
from workers.app import publish_job
from workers.lease import (
    JobSettings,
    Publish,
    as_utc,
    claim,
    default_owner,
    default_sessions,
    default_settings,
    hand_back,
    time_limit,
)

log = logging.getLogger(__name__)

class JobDataError(Exception):
    """The job cannot run on its data; the message tells the user what to do."""


class LeaseLost(Exception):
    """Another worker owns the job now (or it finished); stop without writing."""


class WorkerGone(Exception):
    """The process that started this one died (e.g. kill -9 of the Celery worker); stop training."""


class ShuttingDown(Exception):
    """The worker is shutting down (SIGTERM): save a checkpoint and hand the job back."""


class TimeLimitExceeded(Exception):
    """The job ran past its time limit since it first started; the message says which limit."""


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


class JobRecorder:
    """The engine's callbacks: epoch records, heartbeat and (throttled) checkpoints in short transactions.

    Epoch records are kept and written together at most every PROGRESS_INTERVAL_S
    (the first epoch's at once, and always with a checkpoint and when the job ends):
    with short epochs, a transaction per epoch slowed training by 3-4% (docs/jobs.md).
    """

    def __init__(self, sessions: sessionmaker[Session], job_id: str, owner: str,
                 settings: JobSettings | None = None, shutdown: Callable[[], bool] | None = None) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.owner = owner
        self.settings = settings or JobSettings()
        self.shutdown = shutdown or (lambda: False)
        now = time.monotonic()
        self._next_write = 0.0  # the first epoch shows at once
        self._next_cancel_check = 0.0
        self._next_heartbeat = now + self.settings.heartbeat_s
        self._next_checkpoint = now + self.settings.checkpoint_interval_s
        self._deadline: float | None = None
        self._limit_error = ""
        self._cancelled = False
        # Epoch records not written yet; the latest checkpoint the engine made, the epoch of
        # the one last stored, and the last epoch whose record is stored (a stored
        # checkpoint never gets ahead of the stored records).
        self.pending: list[dict[str, Any]] = []
        self.latest: backprop.Checkpoint | None = None
        self.stored_epoch = -1
        self.recorded_epoch = 0
        # A pool process outlives a killed Celery parent; it must not keep the lease alive.
        self._parent_pid = os.getppid()

    def set_time_left(self, seconds: float | None, error: str = "") -> None:
        """Stop training (TimeLimitExceeded(error)) once this many seconds have passed; None: never."""
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self._limit_error = error

    def _held(self) -> Any:
        return (Job.id == self.job_id, Job.owner == self.owner, Job.status == JobStatus.RUNNING)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """Keep the epoch's record; write the kept ones when they are due, with the checkpoint when one is.

        The engine offers the epoch's checkpoint just before; when one is due, it is
        written in the same transaction as the records, so a resumed job's history
        has no gap.
        """
        self.pending.append(json_safe(record))
        now = time.monotonic()
        checkpoint = self.latest
        checkpoint_due = now >= self._next_checkpoint and checkpoint is not None and \
            int(checkpoint.epoch) > self.stored_epoch
        if now < self._next_write and not checkpoint_due:
            return
        with self.sessions() as session:
            cancelled = self.write_progress(session)
            if cancelled is None:
                raise LeaseLost(self.job_id)
            if checkpoint_due:
                self._next_checkpoint = now + self.settings.checkpoint_interval_s
                self._merge_checkpoint(session, checkpoint)
            else:
                _progress_only(session)
            session.commit()
        self._cancelled = cancelled
        self._written()
        if checkpoint_due:
            self.stored_epoch = int(checkpoint.epoch)

    def write_progress(self, session: Session) -> bool | None:
        """Write the pending epoch records, move the job's progress and renew its heartbeat.

        Return the job's cancel flag (read in the same statement: no query of its
        own), or None, after a rollback, when this worker no longer holds the job.
        The caller commits and, while training goes on, calls _written.
        """
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if self.pending:
            latest = self.pending[-1]
            values.update(epoch=int(latest["epoch"]), metrics={k: v for k, v in latest.items() if k != "layers"})
        held = session.execute(update(Job).where(*self._held()).values(**values)
                               .returning(Job.cancel_requested)).first()
        if held is None:
            session.rollback()
            return None
        if self.pending:
            first, last = int(self.pending[0]["epoch"]), int(self.pending[-1]["epoch"])
            # A resumed job trains the epochs after its checkpoint again: their rows are replaced.
            session.execute(delete(JobEpoch).where(JobEpoch.job_id == self.job_id,
                                                   JobEpoch.epoch.between(first, last)))
            session.execute(insert(JobEpoch), [{"job_id": self.job_id, "epoch": int(r["epoch"]), "record": r}
                                               for r in self.pending])
        return bool(held[0])

    def _written(self) -> None:
        """Account for a committed write_progress: the records are stored, the next write is due later."""
        if self.pending:
            self.recorded_epoch = int(self.pending[-1]["epoch"])
            self.pending.clear()
        now = time.monotonic()
        self._next_write = self._next_cancel_check = now + self.settings.progress_interval_s
        self._next_heartbeat = now + self.settings.heartbeat_s

    def should_stop(self) -> bool:
        """Say whether a user asked to cancel (the flag on the row, read at most every PROGRESS_INTERVAL_S).

        Also renews the heartbeat every few seconds, and stops training (by raising)
        when the lease or the parent process is lost, the worker shuts down, or the
        time limit passes.
        """
        if os.getppid() != self._parent_pid:
            raise WorkerGone(self.job_id)
        if self.shutdown():
            raise ShuttingDown(self.job_id)
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            raise TimeLimitExceeded(self._limit_error)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_s
            with self.sessions() as session:
                held = session.execute(update(Job).where(*self._held()).values(heartbeat_at=utcnow())).rowcount
                session.commit()
            if not held:
                raise LeaseLost(self.job_id)
        if not self._cancelled and now >= self._next_cancel_check:
            self._next_cancel_check = now + self.settings.progress_interval_s
            with self.sessions() as session:
                self._cancelled = bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))
        return self._cancelled

    def on_checkpoint(self, checkpoint: backprop.Checkpoint) -> None:
        """Keep the latest end-of-epoch checkpoint; on_epoch_end stores it at most every CHECKPOINT_INTERVAL_S.

        Serializing and writing every epoch would cost short epochs dearly; a
        resumed job repeats at most that interval's work (bit for bit the same).
        """
        self.latest = checkpoint

    def _merge_checkpoint(self, session: Session, checkpoint: backprop.Checkpoint) -> None:
        session.merge(JobCheckpoint(job_id=self.job_id, epoch=int(checkpoint.epoch), data=checkpoint.to_bytes(),
                                    updated_at=utcnow()))

    def store_checkpoint(self) -> None:
        """Write the pending records and the latest checkpoint (when newer than the stored one) while held."""
        checkpoint = self.latest
        last = int(self.pending[-1]["epoch"]) if self.pending else self.recorded_epoch
        newer = checkpoint is not None and self.stored_epoch < int(checkpoint.epoch) <= last
        if not newer and not self.pending:
            return
        with self.sessions() as session:
            if self.write_progress(session) is None:
                raise LeaseLost(self.job_id)
            if newer:
                self._merge_checkpoint(session, checkpoint)
            session.commit()
        self._written()
        if newer:
            self.stored_epoch = int(checkpoint.epoch)

    def finish(self, status: str, error: str | None = None) -> None:
        """Write the pending records and put the job into a terminal state; nothing if it is not held.

        Should the records themselves fail to write (an unexpected error may be
        theirs), the job still ends, without them: one left running would be retried.
        """
        with self.sessions() as session:
            try:
                held = self.write_progress(session) is not None
            except SQLAlchemyError:
                log.exception("job %s: %d epoch records could not be written", self.job_id, len(self.pending))
                session.rollback()
                self.pending.clear()
                held = True
            if not held:
                return
            session.execute(update(Job).where(*self._held()).values(
                status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow()))
            session.commit()
        self._written()


def _progress_only(session: Session) -> None:
    """Let PostgreSQL commit this transaction without waiting for its WAL flush.

    An epoch record without a checkpoint is progress to show, not state to
    resume from: if the database crashes, losing the last few records is harmless
    (a resumed job writes them again from its checkpoint). On the 2-core test
    machine's local disk it saved only ~0.4 ms of a ~5.5 ms epoch write; the
    flush wait grows with slower or networked disks. No-op on SQLite.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit = off"))


def _final_metrics(history: Any) -> dict[str, Any]:
    """Return the record of the epoch whose weights the model keeps, with how training ended."""
    records = list(history)
    best_epoch = int(getattr(history, "best_epoch", 0) or 0)
    chosen = next((r for r in records if r.get("epoch") == best_epoch), records[-1] if records else {})
    metrics = {k: v for k, v in chosen.items() if k != "layers"}
    metrics["epochs_run"] = len(records)
    metrics["stopped_early"] = bool(getattr(history, "stopped_early", False))
    return json_safe(metrics)


def _source_model(session: Session, job: Job) -> TrainedModel | None:
    """Return the model a warm-started job starts from (None for a cold start)."""
    if job.init_from_model is None:
        return None
    model = session.get(TrainedModel, job.init_from_model)
    if model is None:
        raise JobDataError(f"model {job.init_from_model} (init_from_model) was deleted before the job "
                           f"ran; submit the job again without it or from another model")
    return model


@dataclass
class _Prepared:
    """A job's encoded splits, its preprocessing and its class weights, ready for backprop.train."""

    preprocessor: Preprocessor
    data: dict[str, Any]  # {"X": training inputs, "y": their targets}
    validation: tuple[Any, Any] | None
    class_weight: np.ndarray | None  # one weight per class index; None: unweighted
    counts: dict[str, int]  # n_training_rows, n_validation_rows, n_test_rows
    test: ParsedTable | None = None  # the test split's rows, as a table of their own; None: no test split


# The test split's shuffle is seeded with the job's seed plus this: beyond the seeds a job may
# have (0 to 2**32 - 1), so no job's validation shuffle is another's (or its own) test shuffle.
TEST_SEED_OFFSET = 2**32


def rows_with_target(table: ParsedTable, targets: list[str]) -> np.ndarray:
    """Return the rows (indices, ascending) whose every target cell holds a value (is not NaN)."""
    position = {c["name"]: j for j, c in enumerate(table.columns)}
    values = table.values[:, [position[t] for t in targets]]
    return np.flatnonzero(~np.isnan(values).any(axis=1))


def class_weights(class_weight: str | dict[str, float] | None, classes: list[Any] | None,
                  labels: np.ndarray) -> np.ndarray | None:
    """Resolve a job's `training.class_weight` to one weight per class index, for backprop.train.

    Parameters
    ----------
    class_weight
        As the job holds it: None, "balanced" or {label as a string: weight}.
    classes
        The classes in the model's order (the index of each is its output).
    labels
        The class index of each training row.

    Returns
    -------
    numpy.ndarray or None
        None without weights. "balanced" gives a class ``n_train / (n_present * count)``,
        scikit-learn's formula, where n_present counts the classes the training split holds
        (all of them, but for a warm start's class the data lacks); a class with no training
        row weighs 1, as does one a mapping leaves out.
    """
    if class_weight is None or not classes:
        return None
    weights = np.ones(len(classes), dtype=np.float64)
    if class_weight == "balanced":
        counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=len(classes))
        present = counts > 0
        weights[present] = counts.sum() / (int(present.sum()) * counts[present])
        return weights
    position = {str(c): k for k, c in enumerate(classes)}
    for label, weight in dict(class_weight).items():
        # Job creation refused labels that are not classes: none is skipped here.
        if label in position:
            weights[position[label]] = float(weight)
    return weights


def _prepare(session: Session, job: Job, source: TrainedModel | None = None) -> _Prepared:
    """Load the dataset, split it, fit the preprocessing and encode both splits.

    Rows without a target value are left out of every split; a classification split is
    stratified by class. With `training.test_split`, round(n * test_split) of the n rows
    with a target are held out first (stratified too, on a seed stream of their own), then
    round(n * validation_split) of the rest for validation: both fractions are of n. The
    preprocessing is not fitted on the test rows, nor are they encoded here: they come back
    as a table of their own, scored once training is done (_test_report). A job trains on
    its own `features` (a job made before jobs chose columns has none: the dataset's). A
    warm start keeps the source model's preprocessing instead of fitting its own
    (docs/jobs.md): its weights only mean something on inputs encoded the same way.
    """
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise JobDataError(f"dataset {job.dataset_id} was deleted before the job ran; "
                           f"upload it again and submit a new job")
    table = load_table(session, dataset)
    training = job.training
    rows = rows_with_target(table, dataset.targets)
    if not len(rows):
        raise JobDataError(f"no row of dataset {dataset.id} has a target value; upload one whose "
                           f"target {', '.join(dataset.targets)} is filled in")
    strata = None
    if dataset.task == "classification":
        # Any grouping by target value stratifies: the raw values need no fitted preprocessing.
        target = [c["name"] for c in table.columns].index(dataset.targets[0])
        strata = np.unique(table.values[rows, target], return_inverse=True)[1].ravel()
    validation_split = training["validation_split"]
    test = None
    n_test = 0
    if training.get("test_split"):  # a job made before the test split has none
        n_validation = int(round(len(rows) * validation_split))
        rest_at, test_at = backprop.train_validation_split(len(rows), training["test_split"],
                                                           training["seed"] + TEST_SEED_OFFSET, stratify=strata)
        test_rows, rows = rows[test_at], rows[rest_at]
        strata = None if strata is None else strata[rest_at]
        n_test = len(test_rows)
        test = ParsedTable(table.columns, table.values[test_rows],
                           None if table.datetimes is None else table.datetimes[test_rows])
        # The fraction of the rest that is round(n * validation_split) rows (one row left to train on).
        validation_split = min(n_validation, len(rows) - 1) / len(rows)
    train_at, val_at = backprop.train_validation_split(len(rows), validation_split, training["seed"],
                                                       stratify=strata)
    train_rows, val_rows = rows[train_at], rows[val_at]
    features = job.features if job.features is not None else dataset.features
    state = source.preprocessing if source is not None else \
        fit(table, features, dataset.targets, dataset.task, dataset.classes, train_rows)
    preprocessor = Preprocessor(state)
    loss = training["loss"]

    def labels(y: np.ndarray) -> np.ndarray:
        return y.astype(np.float32).reshape(-1, 1) if loss == "binary_cross_entropy" else y

    y_train = preprocessor.targets_from_table(table, train_rows)
    weights = None
    if preprocessor.task == "classification":
        weights = class_weights(training.get("class_weight"), preprocessor.classes, y_train)
    data = {"X": preprocessor.encode_table(table, train_rows), "y": labels(y_train)}
    validation = None
    if len(val_rows):
        validation = (preprocessor.encode_table(table, val_rows),
                      labels(preprocessor.targets_from_table(table, val_rows)))
    counts = {"n_training_rows": len(train_rows), "n_validation_rows": len(val_rows), "n_test_rows": n_test}
    return _Prepared(preprocessor, data, validation, weights, counts, test)


def job_time_left_s(job: Job, settings: JobSettings) -> tuple[float, str] | None:
    """Return (seconds left, error) of the job's time limit, counted from its first start; None: no limit.

    The limit is the smaller of the job's time_limit_s and JOB_TIME_LIMIT_S.
    """
    limit = time_limit(job.time_limit_s, settings)
    if limit is None or job.started_at is None:
        return None
    return limit[0] - (utcnow() - as_utc(job.started_at)).total_seconds(), limit[1]


@dataclass
class _JobInputs:
    """What a job trains from, read in one short transaction before training starts."""

    job: Job
    prepared: _Prepared
    # The checkpoint an earlier attempt stored; the warm-start model's (definition, weights),
    # on a first attempt only.
    saved_checkpoint: bytes | None
    initial_weights: tuple[Any, bytes] | None


def _train(sessions: sessionmaker[Session], job_id: str, recorder: JobRecorder) -> None:
    """Train a claimed job and store its model: read its inputs, build its network, train, save."""
    inputs = _load_inputs(sessions, job_id, recorder)
    job, prepared = inputs.job, inputs.prepared
    preprocessor = prepared.preprocessor
    # The engine's fields; class_weight (the service's, as sent) goes as the resolved array.
    training = {k: v for k, v in job.training.items() if k not in SERVICE_TRAINING_FIELDS}
    network = _build_network(job, preprocessor, inputs.initial_weights)
    checkpoint = _resume_from(inputs.saved_checkpoint, job, recorder)
    # The validation split in passes within the activation budget (the batches were checked at creation).
    eval_rows = eval_rows_per_pass(network.activation_width, recorder.settings.max_activation_floats)
    history = backprop.train(network, prepared.data["X"], prepared.data["y"], validation_data=prepared.validation,
                             on_epoch_end=recorder.on_epoch_end, should_stop=recorder.should_stop,
                             on_checkpoint=recorder.on_checkpoint, checkpoint=checkpoint,
                             max_eval_rows=eval_rows, class_weight=prepared.class_weight, **training)
    _save_model(sessions, job, recorder, network, history, preprocessor, prepared.counts, prepared.test)


def _load_inputs(sessions: sessionmaker[Session], job_id: str, recorder: JobRecorder) -> _JobInputs:
    """Read the job, start its time limit, encode its data and fetch its checkpoint or warm-start model."""
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        seconds, error = job_time_left_s(job, recorder.settings) or (None, "")
        if seconds is not None and seconds <= 0:
            raise TimeLimitExceeded(error)
        recorder.set_time_left(seconds, error)
        source = _source_model(session, job)
        prepared = _prepare(session, job, source)
        saved = session.scalar(select(JobCheckpoint.data).where(JobCheckpoint.job_id == job_id))
        initial = (source.definition, source.weights) if source is not None and saved is None else None
    return _JobInputs(job, prepared, saved, initial)


def _build_network(job: Job, preprocessor: Preprocessor, initial: tuple[Any, bytes] | None) -> backprop.Network:
    """Build the job's network for the encoded input width; a warm start loads the model's weights into it."""
    try:
        network = backprop.build(job.network, input_dim=preprocessor.input_width, seed=job.training["seed"],
                                 device=job.device)
    except backprop.SpecError as error:
        raise JobDataError(f"the network does not fit the training data ({error}); the input "
                           f"width after one-hot encoding is {preprocessor.input_width}") from None
    if initial is not None:
        # A warm start: the model's weights replace the initializer's. Not on a resume:
        # the checkpoint holds the weights trained since.
        try:
            network.set_parameters(backprop.load(*initial).parameters())
        except ValueError as error:
            raise JobDataError(f"the network does not fit the weights of model {job.init_from_model} "
                               f"(init_from_model): {error}") from None
    return network


def _resume_from(saved: bytes | None, job: Job, recorder: JobRecorder) -> backprop.Checkpoint | None:
    """Return the stored checkpoint to resume from (None: train from the start), telling the recorder its epoch."""
    if saved is None:
        return None
    checkpoint = backprop.Checkpoint.from_bytes(saved)
    recorder.stored_epoch = recorder.recorded_epoch = int(checkpoint.epoch)
    log.info("job %s: attempt %d resumes from its epoch %d checkpoint", job.id, job.attempt, checkpoint.epoch)
    return checkpoint


def _save_model(sessions: sessionmaker[Session], job: Job, recorder: JobRecorder, network: backprop.Network,
                history: Any, preprocessor: Preprocessor, counts: dict[str, int],
                test: ParsedTable | None = None) -> None:
    """Store the trained model and end the job succeeded, in one transaction while the lease is held.

    The job's and the model's metrics are the kept epoch's, with how training ended, the
    rows of each split (`counts`) and, with a test split, `test`: the evaluation report
    on the `test` rows (_test_report), made first, while the heartbeat goes on.
    """
    definition, weights = backprop.save(network)
    metrics = {**_final_metrics(history), **counts}
    if test is not None and test.n_rows:
        metrics["test"] = _test_report(job, recorder, network, preprocessor, test)
    parameter_count = int(sum(np.prod(p.shape) for p in network.parameters().values()))
    owner = recorder.owner
    with sessions() as session:
        # The model is the tenant's whose job made it.
        model = TrainedModel(id=new_id("mdl"), tenant_id=job.tenant_id, job_id=job.id, dataset_id=job.dataset_id,
                             task=preprocessor.task, loss=job.training["loss"], definition=definition,
                             weights=weights, preprocessing=preprocessor.state,
                             classes=preprocessor.classes, metrics=metrics,
                             parameter_count=parameter_count)
        # The last records, the model and the job's success commit together, only while
        # the lease is held: a stale duplicate can never add a second model.
        if recorder.write_progress(session) is None:
            raise LeaseLost(job.id)
        session.add(model)
        done = session.execute(update(Job).where(Job.id == job.id, Job.owner == owner,
                                                 Job.status == JobStatus.RUNNING).values(
            status=JobStatus.SUCCEEDED, model_id=model.id, metrics=metrics, finished_at=utcnow(),
            heartbeat_at=utcnow())).rowcount
        if not done:
            session.rollback()
            raise LeaseLost(job.id)
        session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == job.id))
        session.commit()


def _test_report(job: Job, recorder: JobRecorder, network: backprop.Network, preprocessor: Preprocessor,
                 test: ParsedTable) -> dict[str, Any]:
    """Return the evaluation report of the trained network on the test split's rows.

    The report is an evaluation's (service.core.evaluation.report.evaluate_table), with
    `training.test_permutation_repeats` shuffles per feature column, seeded with the job's
    seed. Between passes the recorder renews the heartbeat and raises if the lease, the
    parent process, the worker or the time limit ends; a cancel asked meanwhile cancels
    the job, as during training.
    """
    from service.core.evaluation.report import EvaluationError, evaluate_table  # for test splits only

    def check() -> None:
        if recorder.should_stop():
            raise backprop.TrainingCancelled(int(recorder.pending[-1]["epoch"]) if recorder.pending
                                             else recorder.recorded_epoch)

    training = job.training
    # Passes within the activation budget, as the validation split's during training.
    per_pass = eval_rows_per_pass(network.activation_width, recorder.settings.max_activation_floats)
    repeats = training.get("test_permutation_repeats", PERMUTATION_REPEATS_DEFAULT)
    try:
        report = evaluate_table(network, preprocessor, training["loss"], test, permutation_repeats=repeats,
                                seed=training["seed"], max_rows_per_pass=per_pass, on_progress=check)
    except EvaluationError as error:  # not expected: the test rows are the training table's, with targets
        raise JobDataError("the test split could not be scored: " +
                           "; ".join(e["message"] for e in error.errors)) from None
    return json_safe(report)


def hand_back_job(sessions: sessionmaker[Session], job_id: str, recorder: JobRecorder, publish: Publish) -> str:
    """Store the latest checkpoint, return the job to the queue and publish it for another worker."""
    try:
        recorder.store_checkpoint()
    except LeaseLost:
        return "lost"
    if not hand_back(sessions, job_id, recorder.owner):
        return "lost"
    with sessions() as session:
        device = session.scalar(select(Job.device).where(Job.id == job_id)) or "cpu"
    try:
        publish(job_id, device)
    except Exception:  # the reaper publishes a queued job again after REQUEUE_QUEUED_AFTER_S
        log.exception("job %s: handed back but not published", job_id)
    log.warning("job %s: handed back at epoch %d (worker shutting down)", job_id, recorder.stored_epoch)
    return JobStatus.QUEUED


def run_job(job_id: str, sessions: sessionmaker[Session] | None = None, owner: str | None = None,
            settings: JobSettings | None = None, shutdown: Callable[[], bool] | None = None,
            publish: Publish | None = None) -> str:
    """Train one job to a terminal state and return its status (domain errors become job states).

    `shutdown` says when the worker is stopping: the job is then handed back with
    `publish` (Celery's send_task by default) to finish on another worker. Every
    log line written meanwhile carries the job id.
    """
    with job_context(job_id):
        return _run_job(job_id, sessions, owner, settings, shutdown, publish)


def _run_job(job_id: str, sessions: sessionmaker[Session] | None, owner: str | None,
             settings: JobSettings | None, shutdown: Callable[[], bool] | None,
             publish: Publish | None) -> str:
    def train(recorder: JobRecorder) -> None:
        try:
            _train(recorder.sessions, job_id, recorder)
        except backprop.DeviceUnavailable as error:
            raise JobDataError(f"this worker cannot train on the requested device: {error}; submit with "
                               f"device cpu or start a GPU worker (queue gpu)") from None

    return run_leased(job_id, train, TRAINING_OUTCOMES, sessions, owner, settings, shutdown, publish)


@dataclass(frozen=True)
class Outcomes:
    """How a kind of job's own exceptions end it (run_leased maps the lease's and the worker's)."""

    cancelled: tuple[type[BaseException], ...]
    # Their messages tell the user what to change: the job fails with them.
    user_errors: tuple[type[BaseException], ...]
    out_of_memory: str


TRAINING_OUTCOMES = Outcomes(
    cancelled=(backprop.TrainingCancelled,),
    user_errors=(TimeLimitExceeded, backprop.TrainingDiverged, JobDataError, backprop.ConfigError),
    out_of_memory="the worker ran out of memory; use a smaller network, batch size or dataset")


def run_leased(job_id: str, work: Callable[[JobRecorder], None], outcomes: Outcomes,
               sessions: sessionmaker[Session] | None = None, owner: str | None = None,
               settings: JobSettings | None = None, shutdown: Callable[[], bool] | None = None,
               publish: Publish | None = None) -> str:
    """Claim a job of any kind, run `work` (which ends it succeeded) and map what it raises to a state.

    Returns the job's status as this worker left it ("lost" or "abandoned" when it no
    longer holds it, "missing" when there is no such job).
    """
    sessions = sessions or default_sessions()
    owner = owner or default_owner()
    settings = settings or default_settings()
    if not claim(sessions, job_id, owner, settings):
        with sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
        log.info("job %s not claimed (status %s)", job_id, status)
        return status or "missing"
    recorder = JobRecorder(sessions, job_id, owner, settings, shutdown)
    try:
        work(recorder)
        return JobStatus.SUCCEEDED
    except outcomes.cancelled:
        recorder.finish(JobStatus.CANCELLED)
        return JobStatus.CANCELLED
    except ShuttingDown:
        return hand_back_job(sessions, job_id, recorder, publish or publish_job)
    except SystemExit:
        # Billiard's SIGTERM handler in a pool process (a signal to the whole process
        # group): hand the job back on the way out rather than wait for the lease to go stale.
        hand_back_job(sessions, job_id, recorder, publish or publish_job)
        raise
    except outcomes.user_errors as error:
        recorder.finish(JobStatus.FAILED, str(error))
        return JobStatus.FAILED
    except LeaseLost:
        log.warning("job %s: lease lost; another worker owns it now", job_id)
        return "lost"
    except WorkerGone:
        # Leave the row as it is: its heartbeat goes stale and the reaper re-queues it.
        log.warning("job %s: the worker's parent process is gone; abandoning the job", job_id)
        return "abandoned"
    except MemoryError:
        recorder.finish(JobStatus.FAILED, outcomes.out_of_memory)
        return JobStatus.FAILED
    except Exception as error:  # a bug: record it on the job rather than leave it running
        log.exception("job %s failed unexpectedly", job_id)
        recorder.finish(JobStatus.FAILED, f"internal error in the worker: {type(error).__name__}: {error}")
        return JobStatus.FAILED

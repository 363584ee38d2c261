"""Job creation: check a request against its dataset, network and warm-start model, commit the job, publish it.

The rules behind POST /v1/jobs, without Flask or Celery: the route parses the body,
calls :func:`create_job` and renders the row it returns. Every problem of a request
is found before anything is written and reported at once as one 422; a valid job may
still be refused by the tenant's limits (429, 413). The row is committed before its id
is published, so a worker always finds the row it is handed (docs/jobs.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.orm import Session, defer

import backprop
from backprop.config import TrainingConfig
from service.core.data.parsing import MAX_ERRORS
from service.core.db.store import dataset_input_width
from service.core.db.tables import Dataset, Job, Network, TrainedModel
from service.core.ids import new_id, utcnow
from service.core.jobs import warm_start
from service.core.jobs.publishing import JobQueue
from service.core.networks import batch_problems, check_definition, problem_entries
from service.core.problems import ApiError, FieldError, invalid
from service.core.schemas import JOB_LOSS_FOR_TASK, SERVICE_TRAINING_FIELDS, JobCreate
from service.core.statuses import JobStatus
from service.core.tenancy import limits
from service.core.tenancy.ownership import find_owned

log = logging.getLogger(__name__)


def create_job(session: Session, tenant: str, request: JobCreate, config: Mapping[str, Any],
               queue: JobQueue, sent_network: Mapping[str, Any] | None = None) -> Job:
    """Check a job request, commit its row, then publish its id to the job's cpu or gpu queue.

    Parameters
    ----------
    session
        A session of the service's database; the job is committed in it.
    tenant
        The tenant asking: the dataset, network and model must be its own.
    request
        The validated request body.
    config
        The settings (the app's config): MAX_PARAMETERS and the tenant limits.
    queue
        Where the job's id is published once its row is committed.
    sent_network
        The `network` object as the client sent it, stored as it is (less its `name`);
        by default the fields of ``request.network`` that were set.

    Returns
    -------
    Job
        The committed row, status queued.

    Raises
    ------
    ApiError
        422 listing every field at fault; 429 when the tenant has no job slot left; 413 when
        it stores as much as it may; 503 when the queue cannot be reached (the job is then
        failed, saying so).
    """
    # The dataset is held from before it is read until the job commits: a delete of it waits,
    # then finds the job (409); or it went first, and the dataset is not found (422).
    hold_dataset(session, tenant, request.dataset_id)
    dataset, definition, training, features = _checked_request(session, tenant, request, config, sent_network)
    # A valid job may still be one too many, or add a model to a tenant out of room.
    limits.check_job_slot(session, tenant, config)
    limits.check_storage(session, tenant, config, 0)
    job = Job(id=new_id("job"), tenant_id=tenant, status=JobStatus.QUEUED, dataset_id=dataset.id,
              network_id=request.network_id, network=definition, training=training,
              device=request.device, epochs=training["epochs"], epoch=0,
              cancel_requested=False, attempt=0, deliveries=0, published_at=utcnow(),
              time_limit_s=request.time_limit_s, init_from_model=request.init_from_model, features=features)
    session.add(job)
    session.commit()
    # Published only after the commit: a worker must always find the row it is handed.
    publish_committed(session, job, queue)
    return job


def hold_dataset(session: Session, tenant: str, dataset_id: str) -> None:
    """Lock the tenant's dataset row (if there is one) until the session commits or rolls back.

    Job creation and dataset deletion both hold it before they look: a job is then never
    committed on a dataset deleted meanwhile. An UPDATE that changes nothing, as
    tenancy.limits.hold_tenant does: it locks the one row on PostgreSQL (a concurrent
    delete waits, or the row is gone when it is read), and on SQLite it takes the
    database's write lock at once, before anything is read.
    """
    session.execute(update(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant)
                    .values(id=Dataset.id))


def training_fields(request: JobCreate, dataset: Dataset,
                    source: TrainedModel | None = None) -> tuple[dict[str, Any], list[FieldError]]:
    """Return the full training config (the loss following the task when not given) and its problems.

    A warm start (`source`, the model of init_from_model) continues with the model's
    loss and classes. The service's fields (schemas.SERVICE_TRAINING_FIELDS: `class_weight`,
    kept as it was sent for the worker to resolve, and the test split's) are checked here;
    the other fields are the engine's.
    """
    warm = source is not None and source.task == dataset.task
    sent: BaseModel = request.training  # TrainingSchema's fields are built at run time
    training = sent.model_dump()
    service = {name: training.pop(name) for name in SERVICE_TRAINING_FIELDS}
    classes = (source.classes if warm and source is not None else dataset.classes) or []
    weight_problems = class_weight_problems(service["class_weight"], dataset.task, classes)
    weight_problems += held_out_problems(service["test_split"], training["validation_split"],
                                         dataset.n_rows - dataset.n_rows_without_target)
    if "loss" not in sent.model_fields_set:
        training["loss"] = source.loss if warm and source is not None else JOB_LOSS_FOR_TASK[dataset.task]
    loss = training["loss"]
    n_classes = len(classes)
    training_problems: list[FieldError] = []
    if backprop.TASK_OF_LOSS[loss] != dataset.task:
        good = ", ".join(k for k, v in backprop.TASK_OF_LOSS.items() if v == dataset.task)
        training_problems = [{"field": "training.loss",
                              "message": f"{loss} does not fit a {dataset.task} dataset; use {good}"}]
    elif loss == "binary_cross_entropy" and n_classes != 2:
        training_problems = [{"field": "training.loss", "message": f"binary_cross_entropy needs two classes; "
                                                                   f"the dataset has {n_classes}; use cross_entropy"}]
    else:
        try:
            # The engine's own check, so the worker can never reject what the API accepted.
            training = TrainingConfig.from_dict(training).to_dict()
        except backprop.ConfigError as error:
            training_problems = problem_entries(error.problems, "training")
    return {**training, **service}, training_problems + weight_problems


def held_out_problems(test_split: float, validation_split: float, n_rows: int) -> list[FieldError]:
    """Return why `training.test_split` cannot go with `validation_split` on `n_rows` rows (empty: it can).

    Both are fractions of the n rows with a target (the dataset's rows less those without
    one), held out as round(n * fraction) rows each (workers/training.py), so together they
    must leave training rows, and a test split must hold out a row: one that rounds to none
    would train without a test report and say nothing. Each one's own bounds are the schema's.
    """
    field = "training.test_split"
    if test_split + validation_split >= 1:
        return [{"field": field,
                 "message": f"test_split ({test_split:g}) and validation_split ({validation_split:g}) together "
                            f"hold out every row; their sum must be under 1"}]
    if test_split <= 0 or n_rows < 1:  # no test split; no row with a target is the worker's to report
        return []
    n_test = round(n_rows * test_split)
    n_validation = round(n_rows * validation_split)
    if n_test == 0:
        hint = (f"use a test_split of at least {1 / n_rows:.3g}" if n_rows >= 2 else
                "the dataset needs more rows")
        return [{"field": field,
                 "message": f"test_split ({test_split:g}) would hold out 0 of the dataset's {n_rows:,} rows with "
                            f"a target (round({n_rows:,} x {test_split:g})), so the model would have no test "
                            f"report; {hint}, or 0 for no test split"}]
    if n_test + n_validation >= n_rows:
        return [{"field": field,
                 "message": f"test_split ({test_split:g}) would hold out {n_test:,} and validation_split "
                            f"({validation_split:g}) {n_validation:,} of the dataset's {n_rows:,} rows with a "
                            f"target, leaving no row to train on; lower them"}]
    return []


def class_weight_problems(class_weight: str | dict[str, float] | None, task: str,
                          classes: list[Any]) -> list[FieldError]:
    """Return why `training.class_weight` does not fit the job's task and classes (empty: it does).

    A label is matched by its string form (JSON keys are strings: ``{"1": 3}`` names the
    integer class 1); the weights' bounds are the schema's.
    """
    field = "training.class_weight"
    if class_weight is None:
        return []
    if task != "classification":
        return [{"field": field, "message": f"class weights apply to classification; this is a {task} "
                                            f"dataset, so leave class_weight null"}]
    if not isinstance(class_weight, dict):
        return []
    labels = [str(c) for c in classes]
    errors: list[FieldError] = [{"field": field, "message": f"{key!r} is not a class of the dataset; its "
                                                            f"classes are {_listed(labels)}"}
                                for key in class_weight if key not in labels]
    return errors[:MAX_ERRORS]


def job_features(request: JobCreate, dataset: Dataset,
                 source: TrainedModel | None = None) -> tuple[list[str], list[FieldError]]:
    """Return the job's feature columns (`features`, else the dataset's less `ignored_columns`) and their problems.

    Every name must be a column of the dataset and not its target. `features` may name any
    other column (identifier and constant ones too) and is taken in the dataset's column
    order; `ignored_columns` only removes columns from the dataset's `features` (naming a
    column that is not among them changes nothing). A warm start uses the model's features,
    in the model's order: naming others is a problem (docs/service.md, "Choosing columns").
    """
    if request.features is not None and request.ignored_columns is not None:
        return [], [{"field": "ignored_columns", "message": "give features or ignored_columns, not both"}]
    field = "features" if request.features is not None else "ignored_columns"
    named = request.features if request.features is not None else request.ignored_columns or []
    columns = [c["name"] for c in dataset.columns]
    known, targets = set(columns), set(dataset.targets)
    # Columns the upload stopped counting (MAX_DISTINCT_STRINGS) hold no values to encode.
    unencoded = {c["name"] for c in dataset.columns if c.get("encoded") is False}
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, name in enumerate(named):
        if name not in known:
            errors.append({"field": f"{field}[{i}]", "message": f"the dataset has no column {name!r}; "
                                                                f"its columns are {_listed(columns)}"})
        elif name in unencoded and field == "features":
            errors.append({"field": f"{field}[{i}]", "message": f"column {name!r} has too many distinct strings "
                                                                f"to encode (MAX_DISTINCT_STRINGS); it cannot be "
                                                                f"a feature"})
        elif name in targets:
            errors.append({"field": f"{field}[{i}]", "message": f"{name!r} is the dataset's target, "
                                                                f"which is never an input; leave it out"})
        elif name in seen:
            errors.append({"field": f"{field}[{i}]", "message": f"{name!r} is named twice"})
        seen.add(name)
    if errors:
        return [], errors[:MAX_ERRORS]
    if source is not None:
        used = [f["name"] for f in source.preprocessing["features"]]
        if (request.features is not None and seen != set(used)) or (request.ignored_columns and seen & set(used)):
            return [], [{"field": field, "message": f"a warm start uses the features of model {source.id}: "
                                                    f"{_listed(used)}; leave {field} out"}]
        return used, []
    if request.features is not None:
        features = [c for c in columns if c in seen]
    else:
        features = [c for c in dataset.features if c not in seen]
    if not features and not dataset.features:
        return [], [{"field": "features", "message": f"dataset {dataset.id} has no feature column by default "
                                                     f"(see its warnings); name the columns to use in features"}]
    if not features:
        return [], [{"field": field, "message": "no feature column is left; the dataset's features are "
                                                f"{_listed(dataset.features)}"}]
    return features, []


def _listed(names: list[str], most: int = 20) -> str:
    """Return up to `most` names, quoted, and how many more there are."""
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _checked_request(session: Session, tenant: str, request: JobCreate, config: Mapping[str, Any],
                     sent_network: Mapping[str, Any] | None
                     ) -> tuple[Dataset, dict[str, Any], dict[str, Any], list[str]]:
    """Return the job's dataset, network definition, full training config and features, or raise the 422."""
    dataset = find_owned(session, Dataset, request.dataset_id, tenant)
    if dataset is None:
        raise invalid([{"field": "dataset_id", "message": f"no dataset with id {request.dataset_id!r}"}])
    source = None
    if request.init_from_model is not None:
        source = find_owned(session, TrainedModel, request.init_from_model, tenant,
                        options=[defer(TrainedModel.weights)])
        if source is None:
            raise invalid([{"field": "init_from_model",
                            "message": f"no model with id {request.init_from_model!r}"}])
    definition = _definition(session, tenant, request, sent_network, source)
    features, errors = job_features(request, dataset, source)
    training, problems = _problems(request, dataset, source, definition, features, int(config["MAX_PARAMETERS"]),
                                   int(config["MAX_ACTIVATION_FLOATS"]))
    errors += problems
    if errors:
        raise invalid(errors)
    return dataset, definition, training, features


def _definition(session: Session, tenant: str, request: JobCreate, sent_network: Mapping[str, Any] | None,
                source: TrainedModel | None) -> dict[str, Any]:
    """Return the job's network definition: a stored network's, the one sent, or the warm-start model's."""
    if request.network_id is not None:
        network = find_owned(session, Network, request.network_id, tenant)
        if network is None:
            raise invalid([{"field": "network_id", "message": f"no network with id {request.network_id!r}"}])
        return network.definition
    if request.network is not None:
        sent = request.network.model_dump(exclude_unset=True) if sent_network is None else sent_network
        return {k: v for k, v in sent.items() if k != "name"}
    assert source is not None  # JobCreate takes no request without a network unless it warm-starts
    return warm_start.model_network(source)


def _problems(request: JobCreate, dataset: Dataset, source: TrainedModel | None, definition: dict[str, Any],
              features: list[str], max_parameters: int,
              max_activation_floats: int) -> tuple[dict[str, Any], list[FieldError]]:
    """Return the full training config and every problem of the job: training, network, warm start.

    `features` are the job's (job_features; empty when they are at fault).
    """
    warm = [] if source is None else warm_start.check_data(source, dataset)
    training, errors = training_fields(request, dataset, source)
    if source is not None and not errors:
        warm += warm_start.check_loss(source, training["loss"])
    # A warm start encodes the data with the model's preprocessing: the model's widths apply.
    # Without valid features the width is unknown; check the rest of the network anyway.
    input_dim = warm_start.model_input_width(source) if source is not None else \
        dataset_input_width(dataset, features) if features else None
    classes = dataset.classes if source is None else source.classes
    # Without a valid loss the output width is unknown; check the rest of the network anyway.
    output_dim = None if errors or warm else backprop.output_width(
        training["loss"], n_classes=len(classes or []) or None, n_targets=len(dataset.targets))
    network_problems = check_definition(definition, input_dim, output_dim, max_parameters,
                                        max_activation_floats=max_activation_floats)
    errors += problem_entries(network_problems, "network")
    if not network_problems:  # a batch holds at most the dataset's rows
        errors += batch_problems(definition, input_dim, min(training["batch_size"], dataset.n_rows),
                                 max_activation_floats)
    if source is not None and not network_problems:
        warm += warm_start.check_parameters(source, definition)
    return training, errors + warm


def publish_committed(session: Session, job: Job, queue: JobQueue) -> None:
    """Publish a committed job; when the queue refuses, fail the job and raise the 503 problem.

    A job that could not be queued must not stay queued: no worker would ever take it.
    """
    try:
        queue.publish(job.id, job.device)
    except Exception as error:  # the broker is down or refuses: say so, do not leave a ghost job
        log.exception("could not publish job %s", job.id)
        session.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED).values(
            status=JobStatus.FAILED, finished_at=utcnow(),
            error=f"the job queue could not be reached ({type(error).__name__}); "
                  f"check the broker and submit the job again"))
        session.commit()
        raise ApiError(503, "Service Unavailable", f"job {job.id} could not be queued: the broker "
                                                   f"is unreachable", slug="broker-unavailable") from None

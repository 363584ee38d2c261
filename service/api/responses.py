"""Response models (pydantic v2): each answer is built through one, and /openapi.json describes it.

The render functions of the resource modules (`dataset_json`, `job_json`, ...) validate
what they answer with these models and dump it, so the document (service/api/openapi.py)
cannot say one thing while an answer holds another: a key the model does not know is
an error (`extra="forbid"`), in the tests as in production. The one exception is the
/predict fast lane (service/api/models.py), which builds its answer by hand for speed;
tests/service/test_openapi.py holds its answers to `Prediction`.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.core.schemas import BATCH_PREDICTION_FORMATS, Device, Task
from service.core.statuses import JobStatus

# Timestamps stay the strings service.core.ids.isoformat writes ("...Z"); a datetime field
# would write them again in pydantic's own form.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
# JSON numbers read back from a JSON column: `float` alone would turn 3600 into 3600.0.
Number = int | float
FreeObject = Annotated[dict[str, Any], Field(description="a JSON object (see docs/service.md)")]


class Answer(BaseModel):
    """A response body: every key it may hold is a field, and nothing else may appear."""

    model_config = ConfigDict(extra="forbid")

    def answer(self) -> dict[str, Any]:
        """Return the JSON body: the fields that were given, in JSON types."""
        return self.model_dump(mode="json", exclude_unset=True)


def render(model: type[Answer], body: dict[str, Any]) -> dict[str, Any]:
    """Validate a response body with its model and return it as JSON values."""
    return model.model_validate(body).answer()


class FieldProblem(Answer):
    """One thing at fault: the field (dots and [i]) and what is wrong with it."""

    model_config = ConfigDict(title="FieldProblem")

    field: str = Field(description="the path of the field at fault; empty for the body")
    message: str
    node: str | None = Field(default=None, description="the network node at fault, where there is one")
    row: int | None = Field(default=None, description="the data row at fault (1 = the first), where there is one")
    column: str | None = Field(default=None, description="the data column at fault, where there is one")


class Problem(Answer):
    """RFC 9457 problem details."""

    model_config = ConfigDict(title="Problem")

    type: str = Field(description="urn:backprop:problem:<slug>, or about:blank for plain HTTP errors")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[FieldProblem] | None = Field(default=None, description="every field at fault (422)")


DatasetSource = Literal["csv", "json", "jsonl", "parquet"]


class Dataset(Answer):
    """An uploaded dataset."""

    model_config = ConfigDict(title="Dataset")

    id: str
    name: str
    n_rows: int
    n_columns: int
    columns: list[dict[str, Any]] = Field(description=(
        "each column: name, kind (numeric, string, datetime), role (feature, target, identifier, constant), "
        "missing and distinct counts, categories (string), has_time (datetime)"))
    features: list[str] = Field(description="the columns a job uses by default: non-target columns of role feature")
    targets: list[str]
    task: Task
    classes: list[Any] | None = Field(description="the target's classes (classification)")
    input_width: int = Field(description="the width of an encoded row: the network's input_dim")
    source: DatasetSource
    n_rows_without_target: int = Field(description="rows missing a target value: kept out of training")
    warnings: list[str] = Field(description="sentences: columns left out of the features and why, folded "
                                            "categories, rows without a target")
    sha256: str = Field(description="the stored payload's key: the sha256 of the tenant and of the .npz's sha256")
    created_at: Timestamp
    size_bytes: int | None = Field(default=None, description="the stored payload's size (GET by id only)")


class DatasetSummary(Answer):
    """A dataset in a list: counts instead of its columns and features (GET it by id for those)."""

    model_config = ConfigDict(title="DatasetSummary")

    id: str
    name: str
    n_rows: int
    n_columns: int
    n_features: int
    targets: list[str]
    task: Task
    classes: list[Any] | None = Field(description="the target's classes (classification)")
    input_width: int = Field(description="the width of an encoded row: the network's input_dim")
    source: DatasetSource
    n_rows_without_target: int = Field(description="rows missing a target value: kept out of training")
    sha256: str = Field(description="the stored payload's key (see Dataset)")
    created_at: Timestamp


class Network(Answer):
    """A stored network definition."""

    model_config = ConfigDict(title="Network")

    id: str
    name: str | None
    definition: FreeObject
    input_dim: int | None
    parameter_count: int | None = Field(description="known when the input width is (input_dim or dataset_id)")
    created_at: Timestamp


class Validation(Answer):
    """The result of checking a network definition without storing it."""

    model_config = ConfigDict(title="Validation")

    valid: bool
    problems: list[FieldProblem]
    input_dim: int | None
    parameter_count: int | None


class Progress(Answer):
    """How far a job has trained."""

    model_config = ConfigDict(title="Progress")

    epoch: int
    epochs: int


class Job(Answer):
    """A training job: status, progress, latest metrics, model id, error."""

    model_config = ConfigDict(title="Job")

    id: str
    status: JobStatus
    dataset_id: str
    network_id: str | None
    network: FreeObject
    training: FreeObject
    device: Device
    time_limit_s: Number | None
    init_from_model: str | None
    features: list[str] | None = Field(description="the columns the job trains on, in the order the model "
                                                   "takes them; null for a job made before jobs chose columns")
    progress: Progress
    metrics: FreeObject | None
    model_id: str | None
    error: str | None
    cancel_requested: bool
    attempt: int
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class FlagDetail(BaseModel):
    """A health flag an epoch raised: the layers past its threshold, and what it means."""

    model_config = ConfigDict(title="FlagDetail", extra="allow")

    layers: list[str] = Field(description="the layers past the flag's threshold (none: the global norm raised it)")
    explanation: str


class JobEpoch(BaseModel):
    """One epoch's record as the engine makes it (docs/engine.md): losses and metrics, per-layer
    diagnostics and health flags. A metric the task has not (accuracy for a regression, the
    validation ones without a validation split) is absent; keys the engine adds later pass through."""

    model_config = ConfigDict(title="JobEpoch", extra="allow")

    epoch: int
    loss: float | None = Field(default=None, description="the training loss (null when it was not finite)")
    accuracy: float | None = Field(default=None, description="classification: training accuracy")
    mae: float | None = Field(default=None, description="regression: training mean absolute error")
    r2: float | None = Field(default=None, description="regression: training R²")
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_mae: float | None = None
    val_r2: float | None = None
    learning_rate: float | None = None
    duration_s: float | None = None
    samples_per_second: float | None = None
    layers: dict[str, dict[str, float | None]] | None = Field(default=None, description=(
        "per layer: grad_norm, weight_norm, update_ratio, saturation (where they apply)"))
    flags: list[str] | None = Field(default=None, description="the health flags raised this epoch")
    flag_details: dict[str, FlagDetail] | None = Field(default=None,
                                                       description="each raised flag's layers and meaning")


class JobMetrics(Answer):
    """A job's per-epoch history."""

    model_config = ConfigDict(title="JobMetrics")

    job_id: str
    status: JobStatus
    epochs: list[JobEpoch] = Field(description="one page of epoch records, oldest first")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next epochs; null on the last page")


class JobSummary(Answer):
    """The data of the `status` event that ends a job's event stream."""

    model_config = ConfigDict(title="JobSummary")

    job_id: str
    status: JobStatus | Literal["deleted"]
    epoch: int | None = None
    epochs: int | None = None
    model_id: str | None = None
    metrics: FreeObject | None = None
    error: str | None = None


class Model(Answer):
    """A trained model, without its weights."""

    model_config = ConfigDict(title="Model")

    id: str
    job_id: str | None
    dataset_id: str | None
    task: Task
    loss: str
    network: FreeObject
    parameter_count: int
    features: list[str]
    targets: list[str]
    classes: list[Any] | None
    preprocessing: FreeObject
    metrics: FreeObject | None
    created_at: Timestamp


class ModelSummary(Answer):
    """A model in a list: counts instead of its features and preprocessing (GET it by id for those)."""

    model_config = ConfigDict(title="ModelSummary")

    id: str
    job_id: str | None
    dataset_id: str | None
    task: Task
    loss: str
    network: FreeObject
    parameter_count: int
    n_features: int
    targets: list[str]
    classes: list[Any] | None
    metrics: FreeObject | None
    created_at: Timestamp


class Prediction(Answer):
    """Predictions: labels with probabilities (classification) or values with the target names."""

    model_config = ConfigDict(title="Prediction")

    predictions: list[Any]
    probabilities: list[list[Number | None]] | None = None
    classes: list[Any] | None = None
    targets: list[str] | None = None
    model_id: str


class EvaluationState(Answer):
    """What an evaluation's answer and its list item both say of it."""

    id: str
    model_id: str
    dataset_id: str
    status: JobStatus
    permutation_repeats: int
    seed: int
    error: str | None
    cancel_requested: bool = Field(description="a cancel was asked while it ran; the worker ends it cancelled")
    attempt: int = Field(description="the worker's attempt: a worker that died mid-way leaves it to the next")
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class Evaluation(EvaluationState):
    """An evaluation of a model on a stored dataset, run on the workers: its status, then its report."""

    model_config = ConfigDict(title="Evaluation")

    report: FreeObject | None = Field(description="the evaluation report (docs/service.md, \"Evaluations\"); "
                                                  "null until the evaluation succeeded")


class EvaluationSummary(EvaluationState):
    """An evaluation in a list: the report's headline metrics instead of the report (GET it by id for that)."""

    model_config = ConfigDict(title="EvaluationSummary")

    metrics: FreeObject | None = Field(description="the report's `metrics`; null until the evaluation succeeded")


class BatchPrediction(Answer):
    """A batch prediction of a model on a stored dataset, run on the workers: its status, then its file."""

    model_config = ConfigDict(title="BatchPrediction")

    id: str
    model_id: str
    dataset_id: str
    format: Literal["csv", "parquet"]
    status: JobStatus
    error: str | None
    cancel_requested: bool = Field(description="a cancel was asked while it ran; the worker ends it cancelled")
    attempt: int = Field(description="the worker's attempt: a worker that died mid-way leaves it to the next")
    n_rows: int | None = Field(description="the rows written (every row of the dataset); null until it succeeded")
    size_bytes: int | None = Field(description="the file's size; null until it succeeded")
    media_type: str | None = Field(description="the download's Content-Type; null until it succeeded")
    sha256: str | None = Field(description="the file's SHA-256 (hex); null until it succeeded")
    download: str | None = Field(description="the path that streams the file; null until it succeeded")
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


assert get_args(BatchPrediction.model_fields["format"].annotation) == BATCH_PREDICTION_FORMATS

ItemT = TypeVar("ItemT", bound=Answer)


class Page(Answer, Generic[ItemT]):
    """One page of a list, newest first; `next_cursor` asks for the next one."""

    items: list[ItemT]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class DatasetPage(Page[DatasetSummary]):
    model_config = ConfigDict(title="DatasetPage")


class NetworkPage(Page[Network]):
    model_config = ConfigDict(title="NetworkPage")


class JobPage(Page[Job]):
    model_config = ConfigDict(title="JobPage")


class ModelPage(Page[ModelSummary]):
    model_config = ConfigDict(title="ModelPage")


class EvaluationPage(Page[EvaluationSummary]):
    model_config = ConfigDict(title="EvaluationPage")


class Health(Answer):
    """Liveness."""

    model_config = ConfigDict(title="Health")

    status: Literal["ok"]


class Readiness(Answer):
    """Readiness: each dependency and `ok` (a failing one is a 503 problem instead)."""

    model_config = ConfigDict(title="Readiness")

    status: Literal["ready"]
    checks: dict[str, str]


RESPONSE_MODELS: list[type[BaseModel]] = [Problem, Dataset, Network, Validation, Job, JobMetrics,
                                          JobSummary, Model, Prediction, DatasetPage, NetworkPage,
                                          JobPage, ModelPage, Health, Readiness, Evaluation, EvaluationPage,
                                          BatchPrediction]

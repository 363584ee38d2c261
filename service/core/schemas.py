"""Request schemas (pydantic v2): they validate requests and generate /openapi.json."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model, model_validator

import backprop
from backprop.config import TrainingConfig

Cell = Annotated[float | str | None, Field(description="a number, a string, or null (missing)")]
Task = Literal["classification", "regression"]
Device = Literal["cpu", "gpu"]


def _json_number(value: Any) -> Any:
    """Refuse what pydantic's lax mode would take for a number: true/false and numeric strings."""
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be a number, not {'a boolean' if isinstance(value, bool) else 'a string'}")
    return value


Int = Annotated[int, BeforeValidator(_json_number)]
Float = Annotated[float, BeforeValidator(_json_number)]
_TYPES: dict[str, Any] = {"int": Int, "float": Float, "str": str, "bool": Annotated[bool, Strict()],
                          "int | None": Int | None, "float | None": Float | None}


def _training_field(spec: dataclasses.Field) -> tuple[Any, Any]:
    """Turn one TrainingConfig field (type, default, bounds metadata) into a pydantic field."""
    kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
    meta = dict(spec.metadata)
    annotation = Literal[tuple(meta.pop("choices"))] if "choices" in meta else _TYPES[kind]
    description = meta.pop("description", None)
    bounds = {k: v for k, v in meta.items() if k in {"ge", "gt", "le", "lt"}}
    return annotation, Field(default=spec.default, description=description, **bounds)


# The training schema is derived from backprop.TrainingConfig: one source of truth for
# names, defaults and bounds.
TrainingSchema: type[BaseModel] = create_model(  # type: ignore[call-overload]  # fields built at run time
    "Training",
    __config__=ConfigDict(extra="forbid", title="Training"),
    __doc__="Hyperparameters of a training job; every field has a default. When `loss` is "
            "absent it follows the dataset's task: cross_entropy for classification, mse for "
            "regression.",
    **{f.name: _training_field(f) for f in dataclasses.fields(TrainingConfig)},
)


class NetworkDefinition(BaseModel):
    """A network: `layers` (a stack) or `nodes` + `output` (a graph); see docs/design.md.

    The engine (backprop.validate) checks the content and reports every problem at once.
    """

    model_config = ConfigDict(extra="allow", title="NetworkDefinition")

    name: str | None = Field(default=None, max_length=200,
                             description="a name to find it by (POST /v1/networks only)")
    layers: list[dict[str, Any]] | None = Field(
        default=None, description="stack form: [{type: dense, units: 64, activation: relu}, ...]")
    nodes: list[dict[str, Any]] | None = Field(
        default=None, description="graph form: [{name, type, inputs: [...], ...}, ...]")
    output: str | None = Field(default=None, description="graph form: the output node's name")


class DatasetJson(BaseModel):
    """A dataset given as JSON rows (the alternative to a multipart CSV upload)."""

    model_config = ConfigDict(extra="forbid", title="DatasetJson")

    name: str | None = Field(default=None, max_length=200)
    columns: list[str] = Field(min_length=1, description="column names")
    data: list[list[Cell]] = Field(description="rows of cells, one per column")
    target: str | list[str] | None = Field(
        default=None, description="target column(s); default the last column")
    task: Task | None = Field(default=None, description="inferred when absent")


class DatasetUpload(BaseModel):
    """Fields of a multipart/form-data dataset upload."""

    model_config = ConfigDict(title="DatasetUpload")

    file: bytes = Field(json_schema_extra={"format": "binary"},
                        description="CSV with a header row (UTF-8; quoted fields, BOM and CRLF are fine)")
    name: str | None = Field(default=None, description="default: the file's name")
    target: str | None = Field(default=None, description="target column; several comma-separated "
                                                         "for multi-output regression; default the last column")
    task: Task | None = Field(default=None, description="inferred when absent")


# The longest a job may ask to run (time_limit_s): a week.
MAX_JOB_TIME_LIMIT_S = 7 * 24 * 3600


class JobCreate(BaseModel):
    """A training job: a dataset, a network (inline, by id, or a model's), training fields, a device."""

    model_config = ConfigDict(extra="forbid", title="JobCreate")

    dataset_id: str = Field(min_length=1)
    network: NetworkDefinition | None = None
    network_id: str | None = None
    training: TrainingSchema = Field(default_factory=TrainingSchema)  # type: ignore[valid-type]
    device: Device = "cpu"
    time_limit_s: float | None = Field(
        default=None, gt=0, le=MAX_JOB_TIME_LIMIT_S, allow_inf_nan=False, strict=True,
        description="wall-clock limit of this job in seconds, from its first start; the job ends "
                    "failed past it. The service's JOB_TIME_LIMIT_S applies too: the smaller wins")
    init_from_model: str | None = Field(
        default=None, min_length=1,
        description="warm start: a model id whose weights (and preprocessing) the job starts from; "
                    "without network and network_id the model's network is used")

    @model_validator(mode="after")
    def _one_network(self) -> JobCreate:
        given = (self.network is not None) + (self.network_id is not None)
        if given > 1:
            raise ValueError("give at most one of network and network_id")
        if given == 0 and self.init_from_model is None:
            raise ValueError("give exactly one of network and network_id (or init_from_model to "
                             "continue training a model with its network)")
        return self


class PredictRequest(BaseModel):
    """Rows to score: `inputs` (lists in training feature order) or `records` (objects)."""

    model_config = ConfigDict(extra="forbid", title="PredictRequest")

    inputs: list[Any] | None = Field(default=None, description="[[value, ...], ...] in feature order",
                                     json_schema_extra={"items": {"type": "array"}})
    records: list[Any] | None = Field(default=None, description="[{column: value, ...}, ...]",
                                      json_schema_extra={"items": {"type": "object"}})

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.inputs is None) == (self.records is None):
            raise ValueError("give exactly one of inputs and records")
        return self


REQUEST_MODELS: list[type[BaseModel]] = [DatasetJson, DatasetUpload, NetworkDefinition,
                                         JobCreate, TrainingSchema, PredictRequest]

JOB_LOSS_FOR_TASK = {"classification": "cross_entropy", "regression": "mse"}
assert set(JOB_LOSS_FOR_TASK.values()) <= set(backprop.LOSSES)

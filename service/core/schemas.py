"""Request schemas (pydantic v2): they validate requests and generate /openapi.json."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    WithJsonSchema,
    create_model,
    model_validator,
)

import backprop
from backprop.activations import ACTIVATIONS
from backprop.config import TrainingConfig
from backprop.initializers import INITIALIZERS
from backprop.spec import COMMON_KEYS, INPUT, MAX_NODES, MAX_UNITS, NODE_KEYS, REQUIRED
from service.core.data.formats import EXTENSIONS as UPLOAD_EXTENSIONS
from service.core.data.formats import FORMATS as UPLOAD_FORMATS

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
    if bounds and kind.endswith(" | None"):
        # On `X | None` the bounds go on the number, so that the JSON Schema states them
        # (as minimum, exclusiveMinimum, ...) on its branch; validation is the same.
        number = {"int": int, "float": float}[kind.removesuffix(" | None")]
        annotation = Annotated[number, Field(**bounds), BeforeValidator(_json_number)] | None
        bounds = {}
    return annotation, Field(default=spec.default, description=description, **bounds)


# The largest weight `training.class_weight` may give a class: far beyond any useful
# imbalance, and small enough that a weighted float32 loss cannot overflow.
MAX_CLASS_WEIGHT = 1e6
ClassWeights = dict[str, Annotated[float, Field(gt=0, le=MAX_CLASS_WEIGHT, allow_inf_nan=False),
                                   BeforeValidator(_json_number)]]
# Tagged so that a bad weight is reported alone (not with "should be 'balanced'" too); the tags
# are the names service.core.problems drops from an error's path.
ClassWeight = Annotated[
    Annotated[Literal["balanced"], Tag("str")] | Annotated[ClassWeights, Tag("dict")],
    Discriminator(lambda value: "dict" if isinstance(value, dict) else "str"),
] | None
# A training field of the service's, not the engine's: the engine takes one weight per class
# index (backprop.train's class_weight array); labels are the dataset's, so the worker resolves
# this against the job's classes and training split (workers.training.class_weights).
CLASS_WEIGHT_FIELD: tuple[Any, Any] = (ClassWeight, Field(
    default=None,
    description="classification only: null (every class weighs 1), \"balanced\" (n_train / (n_classes "
                "* rows of the class) over the training split, as scikit-learn) or {label: weight} with "
                "labels as the dataset's classes written as strings ({\"1\": 3} for integer classes); "
                "a class left out weighs 1"))

# The test split (docs/service.md, "Test split"): rows the worker holds out before the
# validation split and scores once training is done; the engine never sees them. Its
# upper bound with validation_split (their sum under 1) is job creation's check.
TEST_SPLIT_FIELD: tuple[Any, Any] = (Float, Field(
    default=0.0, ge=0, lt=1, allow_inf_nan=False,
    description="fraction of the rows with a target held out before the validation split (stratified by "
                "class for classification), never trained on nor used to stop or choose; the model's "
                "metrics.test is the evaluation report on them. 0: none. test_split + validation_split < 1"))
# Shuffles per feature column of a permutation importance: the default of a report, and the most a
# request may ask (each costs a pass over the rows per feature column).
PERMUTATION_REPEATS_DEFAULT = 5
MAX_PERMUTATION_REPEATS = 100
TEST_PERMUTATION_REPEATS_FIELD: tuple[Any, Any] = (Int, Field(
    default=PERMUTATION_REPEATS_DEFAULT, ge=0, le=MAX_PERMUTATION_REPEATS,
    description="shuffles of each feature column for the permutation importance of metrics.test; 0: no "
                "permutation importance (a pass over the test rows per feature column and shuffle)"))
# The training fields that are the service's, not backprop.TrainingConfig's: the worker keeps
# them from backprop.train (class_weight goes there resolved to one weight per class index).
SERVICE_TRAINING_FIELDS = ("class_weight", "test_split", "test_permutation_repeats")

# The training schema is derived from backprop.TrainingConfig: one source of truth for
# names, defaults and bounds; SERVICE_TRAINING_FIELDS are the service's own.
TrainingSchema: type[BaseModel] = create_model(  # type: ignore[call-overload]  # fields built at run time
    "Training",
    __config__=ConfigDict(extra="forbid", title="Training"),
    __doc__="Hyperparameters of a training job; every field has a default. When `loss` is "
            "absent it follows the dataset's task: cross_entropy for classification, mse for "
            "regression.",
    **{f.name: _training_field(f) for f in dataclasses.fields(TrainingConfig)},
    class_weight=CLASS_WEIGHT_FIELD,
    test_split=TEST_SPLIT_FIELD,
    test_permutation_repeats=TEST_PERMUTATION_REPEATS_FIELD,
)
assert set(SERVICE_TRAINING_FIELDS) <= set(TrainingSchema.model_fields), "a service training field is not in the schema"


# The JSON Schema of each parameter a node may have (backprop.spec.NODE_KEYS names them,
# backprop.spec._check_param holds the rules these restate: units from 1 to MAX_UNITS,
# names from the engine's tables, 0 <= rate < 1).
NODE_PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "units": {"type": "integer", "minimum": 1, "maximum": MAX_UNITS},
    "activation": {"enum": list(ACTIVATIONS)},
    "init": {"enum": list(INITIALIZERS)},
    "use_bias": {"type": "boolean"},
    "rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
}
assert {key for keys in NODE_KEYS.values() for key in keys} == set(NODE_PARAMETER_SCHEMAS), \
    "a node parameter of backprop.spec.NODE_KEYS has no JSON Schema here"
# Node types that join several inputs: a stack feeds each layer one input, so they are graph-only.
JOINING_NODE_TYPES = ("add", "concat")
NODE_NAME_SCHEMA = {"type": "string", "minLength": 1, "not": {"const": INPUT},
                    "description": f"unique in the network; {INPUT!r} names the network's input"}
DEFINITION_NAME_SCHEMA = {"type": ["string", "null"], "maxLength": 200,
                          "description": "a name to find it by (POST /v1/networks only)"}


def _node_schema(node_type: str, graph: bool) -> dict[str, Any]:
    """Return the JSON Schema of one node of `node_type`, in the graph form or as a layer of a stack."""
    keys = NODE_KEYS[node_type]
    properties: dict[str, Any] = {"type": {"const": node_type}, "name": NODE_NAME_SCHEMA}
    required = ["type"]
    if graph:
        properties["inputs"] = {"type": "array", "items": {"type": "string"},
                                "minItems": 2 if node_type in JOINING_NODE_TYPES else 1,
                                # add may sum an input with itself; the others take each once
                                "uniqueItems": node_type != "add",
                                "description": "node names, or 'input'"}
        required = ["name", "type", "inputs"]
    properties |= {key: NODE_PARAMETER_SCHEMAS[key] for key in keys}
    required += [key for key, default in keys.items() if default is REQUIRED]
    assert set(properties) <= COMMON_KEYS | set(keys)
    return {"type": "object", "title": f"{node_type} {'node' if graph else 'layer'}", "properties": properties,
            "required": required, "additionalProperties": False}


def _definition_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Replace the model's loose fields by the engine's rules: a stack (`layers`) or a graph
    (`nodes`, `output`), each node of a type the engine knows, with its parameters' bounds.

    What JSON Schema cannot say stays with backprop.validate: names unique and referring to
    nodes of the graph, no cycle, every node feeding the output, the widths, the parameter budget.
    """
    def nodes(graph: bool) -> dict[str, Any]:
        types = [t for t in NODE_KEYS if graph or t not in JOINING_NODE_TYPES]
        return {"type": "array", "minItems": 1, "maxItems": MAX_NODES,
                "items": {"oneOf": [_node_schema(t, graph) for t in types]}}

    for key in ("properties", "required", "additionalProperties"):
        schema.pop(key, None)
    schema["oneOf"] = [
        {"type": "object", "title": "stack", "required": ["layers"], "additionalProperties": False,
         "properties": {"name": DEFINITION_NAME_SCHEMA,
                        "layers": nodes(graph=False) | {"description": "layers in order, each fed by the one before"}}},
        {"type": "object", "title": "graph", "required": ["nodes"], "additionalProperties": False,
         "properties": {"name": DEFINITION_NAME_SCHEMA,
                        "nodes": nodes(graph=True),
                        "output": {"type": "string", "description": "the output node's name; default the last node"}}},
    ]


class NetworkDefinition(BaseModel):
    """A network: `layers` (a stack) or `nodes` + `output` (a graph); see docs/design.md.

    The engine (backprop.validate) checks the content and reports every problem at once; the
    JSON Schema states its rules as far as JSON Schema can (_definition_schema).
    """

    model_config = ConfigDict(extra="allow", title="NetworkDefinition", json_schema_extra=_definition_schema)

    name: str | None = Field(default=None, max_length=200,
                             description="a name to find it by (POST /v1/networks only)")
    layers: list[dict[str, Any]] | None = Field(
        default=None, description="stack form: [{type: dense, units: 64, activation: relu}, ...]")
    nodes: list[dict[str, Any]] | None = Field(
        default=None, description="graph form: [{name, type, inputs: [...], ...}, ...]")
    output: str | None = Field(default=None, description="graph form: the output node's name")


class NetworkToCheck(NetworkDefinition):
    """A definition to check (POST /v1/networks/validate): only its outer shape is the schema's,
    since the problems of its content are the answer (`valid`, `problems`), not a 422."""

    model_config = ConfigDict(title="NetworkToCheck", json_schema_extra=None)


# The parser's rule for a column name (service.core.data.parsing._check_header, after
# stripping: not empty, no NUL).
COLUMN_NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[^\\u0000]*\\S[^\\u0000]*$"}
# A table cell of a JSON dataset body, as a cell of a JSON file (service.core.data.parsing.json_cell):
# a null, or a blank string, is a missing value; true/false are the strings "true"/"false".
TABLE_CELL_SCHEMA: dict[str, Any] = {
    "type": ["number", "string", "boolean", "null"],
    "description": "a number, a string, true/false or null (missing); a column is numeric when most of its "
                   "present cells are numbers"}


def _table_cell(value: Any) -> Any:
    """Refuse an array or object as a cell; keep any other JSON value as it is.

    Kept as parsed, not coerced (pydantic's lax float would make true 1.0 and 7 the
    text "7.0"): the cell goes to parsing.json_cell, as a JSON file's cells do.
    """
    if isinstance(value, (list, dict)):
        raise ValueError(f"{'an array' if isinstance(value, list) else 'an object'} is not a cell; a cell is a "
                         f"number, a string, true/false or null")
    return value


Cell = Annotated[Any, BeforeValidator(_table_cell), WithJsonSchema(TABLE_CELL_SCHEMA)]


class DatasetJson(BaseModel):
    """A dataset given as a JSON body: `columns` + `data` (rows), or `records` (objects); the
    alternative to a multipart file upload. A null cell, an empty string or (in records) an
    absent key is a missing value."""

    model_config = ConfigDict(extra="forbid", title="DatasetJson", json_schema_extra={
        # _one_shape's rule: columns and data together, or records alone.
        "oneOf": [{"required": ["columns", "data"], "not": {"required": ["records"]}},
                  {"required": ["records"], "not": {"anyOf": [{"required": ["columns"]}, {"required": ["data"]}]}}]})

    name: str | None = Field(default=None, max_length=200)
    columns: list[str] | None = Field(
        default=None, min_length=1, description="column names (a target and at least one feature); with `data`",
        json_schema_extra={"minItems": 2, "uniqueItems": True, "items": COLUMN_NAME_SCHEMA})
    data: list[list[Cell]] | None = Field(
        default=None, description="rows of cells, one per column (null: missing); with `columns`",
        json_schema_extra={"minItems": 1, "items": {"type": "array", "minItems": 2, "items": TABLE_CELL_SCHEMA}})
    records: list[dict[str, Cell]] | None = Field(
        default=None, min_length=1,
        description="rows as objects {column: cell}, instead of `columns` + `data`; the columns are the "
                    "union of the keys in the order first seen, and a key a record lacks is a missing cell",
        json_schema_extra={"items": {"type": "object", "additionalProperties": TABLE_CELL_SCHEMA}})
    target: str | list[str] | None = Field(
        default=None, description="target column(s); default the last column",
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                          "minItems": 1, "uniqueItems": True},
                                     {"type": "null"}]})
    task: Task | None = Field(default=None, description="inferred when absent")

    @model_validator(mode="after")
    def _one_shape(self) -> DatasetJson:
        if self.records is not None:
            if self.columns is not None or self.data is not None:
                raise ValueError("give records, or columns and data, not both")
        elif self.columns is None or self.data is None:
            raise ValueError("give columns and data (rows), or records (objects)")
        return self


def _form_fields_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """A form field is text or absent, never null: drop the null branch of each optional field."""
    for field_schema in schema.get("properties", {}).values():
        branches = [b for b in field_schema.get("anyOf", []) if b != {"type": "null"}]
        if len(branches) == 1:
            del field_schema["anyOf"]
            field_schema.update(branches[0])
            if field_schema.get("default", 0) is None:
                del field_schema["default"]


def _extensions_text() -> str:
    """Say which file name extensions make each format: ".csv, .json, .jsonl/.ndjson, ..."."""
    by_format: dict[str, list[str]] = {}
    for extension, fmt in UPLOAD_EXTENSIONS.items():
        by_format.setdefault(fmt, []).append(extension)
    return ", ".join("/".join(by_format[fmt]) for fmt in UPLOAD_FORMATS if fmt in by_format)


class DatasetUpload(BaseModel):
    """Fields of a multipart/form-data dataset upload."""

    model_config = ConfigDict(title="DatasetUpload", json_schema_extra=_form_fields_schema)

    file: bytes = Field(json_schema_extra={"format": "binary"},
                        description="the table: CSV with a header row (UTF-8; quoted fields, BOM and CRLF are "
                                    "fine), JSON (an array of records, or columns + data), JSON Lines or Parquet")
    format: str | None = Field(default=None, description=f"{', '.join(UPLOAD_FORMATS)}; default: told by the "
                                                         f"file's name ({_extensions_text()}), else by its "
                                                         f"content, else csv",
                               json_schema_extra={"anyOf": [{"type": "string", "enum": [*UPLOAD_FORMATS, ""]}]})
    na_values: str | None = Field(default=None, description="CSV only: the tokens that mean a missing cell, "
                                                            "comma-separated or a JSON list of strings, in place "
                                                            "of pandas' defaults (NA, N/A, null, ...); an empty "
                                                            "cell is always missing")
    name: str | None = Field(default=None, description="default: the file's name")
    target: str | None = Field(default=None, description="target column; several comma-separated "
                                                         "for multi-output regression; default the last column")
    task: Task | None = Field(default=None, description="inferred when absent or empty",
                              json_schema_extra={"anyOf": [{"type": "string", "enum": [*get_args(Task), ""]}]})


# The longest a job may ask to run (time_limit_s): a week.
MAX_JOB_TIME_LIMIT_S = 7 * 24 * 3600


class JobCreate(BaseModel):
    """A training job: a dataset, a network (inline, by id, or a model's), training fields, a device."""

    model_config = ConfigDict(extra="forbid", title="JobCreate", json_schema_extra={
        # _one_network's rule: not both of network and network_id; one of them or init_from_model.
        "not": {"required": ["network", "network_id"],
                "properties": {"network": {"type": "object"}, "network_id": {"type": "string"}}},
        "anyOf": [{"required": [key], "properties": {key: {"type": kind}}}
                  for key, kind in (("network", "object"), ("network_id", "string"),
                                    ("init_from_model", "string"))],
        # service.core.jobs.creation.job_features's rule: not both lists of columns.
        "allOf": [{"not": {"required": ["features", "ignored_columns"],
                           "properties": {"features": {"type": "array"}, "ignored_columns": {"type": "array"}}}}]})

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
    features: list[str] | None = Field(
        default=None, min_length=1, json_schema_extra={"uniqueItems": True},
        description="the columns to train on (any but the target: identifier and constant columns "
                    "too), taken in the dataset's column order, which positional /predict `inputs` follow; "
                    "default the dataset's `features`; a warm start uses the model's")
    ignored_columns: list[str] | None = Field(
        default=None, json_schema_extra={"uniqueItems": True},
        description="columns to leave out of the dataset's `features` (H2O's name); not with `features`")

    @model_validator(mode="after")
    def _one_network(self) -> JobCreate:
        given = (self.network is not None) + (self.network_id is not None)
        if given > 1:
            raise ValueError("give at most one of network and network_id")
        if given == 0 and self.init_from_model is None:
            raise ValueError("give exactly one of network and network_id (or init_from_model to "
                             "continue training a model with its network)")
        return self


# The most rows one predict request may score.
MAX_PREDICT_ROWS = 100_000
# A cell to score (service.core.data.preprocessing.Preprocessor._cell): a number, a string
# (a category, a number as text, an ISO date), or null (a missing value); booleans, lists and
# objects are errors.
PREDICT_CELL_SCHEMA = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}


def _rows_schema(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a list of rows to score: 1 to MAX_PREDICT_ROWS of `row`, or null."""
    return {"anyOf": [{"type": "array", "minItems": 1, "maxItems": MAX_PREDICT_ROWS, "items": row},
                      {"type": "null"}]}


class PredictRequest(BaseModel):
    """Rows to score: `inputs` (lists in training feature order) or `records` (objects)."""

    model_config = ConfigDict(extra="forbid", title="PredictRequest", json_schema_extra={
        # _one_form's rule: exactly one of the two is a list.
        "oneOf": [{"required": [key], "properties": {key: {"type": "array"}}} for key in ("inputs", "records")]})

    inputs: list[Any] | None = Field(default=None, description="[[value, ...], ...] in feature order",
                                     json_schema_extra=_rows_schema({"type": "array", "minItems": 1,
                                                                     "items": PREDICT_CELL_SCHEMA}))
    records: list[Any] | None = Field(default=None, description="[{column: value, ...}, ...]",
                                      json_schema_extra=_rows_schema({"type": "object",
                                                                      "additionalProperties": PREDICT_CELL_SCHEMA}))

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.inputs is None) == (self.records is None):
            raise ValueError("give exactly one of inputs and records")
        return self


BATCH_PREDICTION_FORMATS = ("csv", "parquet")
# The media type of each format's file, as its download answers it.
BATCH_PREDICTION_MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
assert tuple(BATCH_PREDICTION_MEDIA_TYPES) == BATCH_PREDICTION_FORMATS
# The format of a request that names none (and of a stored job's options that lack one).
BATCH_PREDICTION_FORMAT_DEFAULT: Literal["csv", "parquet"] = "csv"


class EvaluationCreate(BaseModel):
    """Score a stored dataset with a model on the workers: the report, and permutation importance."""

    model_config = ConfigDict(extra="forbid", title="EvaluationCreate")

    dataset_id: str = Field(min_length=1, description="a dataset of the tenant holding the model's feature "
                                                      "and target columns (matched by name)")
    permutation_repeats: int = Field(default=PERMUTATION_REPEATS_DEFAULT, ge=0, le=MAX_PERMUTATION_REPEATS,
                                     strict=True,
                                     description="shuffles of each feature column for permutation importance; "
                                                 "0 leaves it out")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, strict=True, description="seed of the shuffles")


class BatchPredictionCreate(BaseModel):
    """Write a stored dataset's rows with the model's predictions, on the workers."""

    model_config = ConfigDict(extra="forbid", title="BatchPredictionCreate")

    dataset_id: str = Field(min_length=1, description="a dataset of the tenant holding the model's feature "
                                                      "columns (matched by name)")
    format: Literal["csv", "parquet"] = Field(default=BATCH_PREDICTION_FORMAT_DEFAULT, description="the file written")


assert get_args(BatchPredictionCreate.model_fields["format"].annotation) == BATCH_PREDICTION_FORMATS

REQUEST_MODELS: list[type[BaseModel]] = [DatasetJson, DatasetUpload, NetworkDefinition, NetworkToCheck,
                                         JobCreate, TrainingSchema, PredictRequest, EvaluationCreate,
                                         BatchPredictionCreate]

JOB_LOSS_FOR_TASK = {"classification": "cross_entropy", "regression": "mse"}
assert set(JOB_LOSS_FOR_TASK.values()) <= set(backprop.LOSSES)
